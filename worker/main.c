/*
 * main.c - the zimage binary: one table of subcommands.
 *
 * Each subcommand lives in its own file as `int zi_cmd_NAME(int argc, char **argv)`
 * (argv[0] is the subcommand name) and returns the process exit status: 0 success,
 * 2 usage or configuration error, 1 any other failure. The references below are weak,
 * so a subcommand whose file is not linked in is simply not listed.
 */
#include "cli_util.h"

#include <stdio.h>
#include <string.h>

#define ZI_CMD(name) int zi_cmd_##name(int argc, char **argv) __attribute__((weak));
ZI_CMD(tokenize)
ZI_CMD(encode)
ZI_CMD(generate)
ZI_CMD(bench)
ZI_CMD(worker)
ZI_CMD(submit)
ZI_CMD(status)
ZI_CMD(top)
ZI_CMD(dlq)
ZI_CMD(devbroker)
#undef ZI_CMD

typedef struct zi_command {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *summary;
} zi_command;

static const zi_command zi_commands[] = {
    {"tokenize", zi_cmd_tokenize, "print the templated prompt's token ids as JSON"},
    {"encode", zi_cmd_encode, "run the text encoder and write prompt_embeds"},
    {"generate", zi_cmd_generate, "generate one image to a PNG file"},
    {"bench", zi_cmd_bench, "measure speed and memory of the pipeline"},
    {"worker", zi_cmd_worker, "run the Kafka -> pipeline -> S3 -> Redis worker"},
    {"submit", zi_cmd_submit, "enqueue one job and record it as queued"},
    {"status", zi_cmd_status, "print a job's status hash"},
    {"top", zi_cmd_top, "live view of the worker fleet from Redis"},
    {"dlq", zi_cmd_dlq, "inspect and replay the dead-letter queue"},
    {"devbroker", zi_cmd_devbroker, "development Kafka broker (librdkafka mock cluster)"},
};

static void zi_usage(FILE *f)
{
    fprintf(f, "usage: zimage <command> [options]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof zi_commands / sizeof zi_commands[0]; i++)
        if (zi_commands[i].fn)
            fprintf(f, "  %-10s %s\n", zi_commands[i].name, zi_commands[i].summary);
    fprintf(f, "\nRun 'zimage <command> --help' for a command's options.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        /* One error line (docs/contract.md); the command list is what --help prints. */
        return zi_cli_usage_error(NULL, "no command given");
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        zi_usage(stdout);
        return 0;
    }
    if (strcmp(argv[1], "--version") == 0) {
        printf("zimage %s\n", ZI_VERSION);
        return 0;
    }
    for (size_t i = 0; i < sizeof zi_commands / sizeof zi_commands[0]; i++)
        if (zi_commands[i].fn && strcmp(argv[1], zi_commands[i].name) == 0)
            return zi_commands[i].fn(argc - 1, argv + 1);
    return zi_cli_usage_error(NULL, "unknown command '%s'", argv[1]);
}
