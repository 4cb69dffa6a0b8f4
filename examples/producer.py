#!/usr/bin/env python3
"""producer.py - enqueue zimage jobs from a Python service (confluent-kafka + redis-py).

This is what `zimage submit` does, for services written in Python: validate the job
against the contract (docs/job.schema.json), record it as `queued` in Redis BEFORE
producing it (so a fast worker never finds an unknown job), then produce it to
kafka.topic with key = job_id, acks=all and idempotence, and wait for the broker's
acknowledgement. The worker fills in the rest of the job hash; poll it (or consume the
result topic, when kafka.result_topic is set) to learn the outcome.

    pip install confluent-kafka redis
    python3 examples/producer.py --bootstrap 127.0.0.1:9092 --redis redis://127.0.0.1:6379/0 \
        --prompt "a lighthouse on a cliff at dawn" --wait

Any librdkafka property (security.protocol, sasl.*, ...) can be added with -X key=value.
Not run by the tests; kept syntactically valid (python3 -m py_compile).
"""
import argparse
import json
import re
import secrets
import sys
import time

from confluent_kafka import KafkaException, Producer

try:  # the Redis part is optional: without it the job is only produced
    import redis
except ImportError:  # pragma: no cover
    redis = None

JOB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
FINAL = {"succeeded", "failed", "cancelled"}
# zimage:job:{id} is reset and marked queued, and the event added, in one atomic step.
QUEUED_LUA = """
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[1], 'status', 'queued', 'worker', '', 'queued_at', ARGV[2], 'attempt', '0')
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', '100000', '*', 'job_id', ARGV[3],
           'status', 'queued', 'worker', '')
return 1
"""


def build_job(args):
    """The job message as a dict, checked against the contract's rules."""
    job_id = args.job_id or secrets.token_hex(16)
    if not JOB_ID_RE.match(job_id) or ".." in job_id:
        raise ValueError("job_id must match [A-Za-z0-9][A-Za-z0-9._-]{0,127} without '..'")
    if len(args.prompt.encode("utf-8")) > 16384:
        raise ValueError("prompt: more than 16384 bytes")
    job = {"job_id": job_id, "prompt": args.prompt}
    if args.negative_prompt is not None:
        job["negative_prompt"] = args.negative_prompt
    for name in ("width", "height"):
        v = getattr(args, name)
        if v is not None:
            if v % 16 or not 64 <= v <= 4096:
                raise ValueError(f"{name}: a multiple of 16 in [64, 4096] (the default limits)")
            job[name] = v
    if args.steps is not None:
        if not 1 <= args.steps <= 50:
            raise ValueError("steps: 1..50 (the default limit)")
        job["steps"] = args.steps
    if args.guidance is not None:
        if not 0 <= args.guidance <= 20:
            raise ValueError("guidance_scale: 0..20")
        job["guidance_scale"] = args.guidance
    if args.seed is not None:
        if not 0 <= args.seed < 2**64:
            raise ValueError("seed: 0..2^64-1")
        job["seed"] = str(args.seed)  # a string keeps all 64 bits exact
    return job


def main():
    p = argparse.ArgumentParser(description="Enqueue one zimage job.")
    p.add_argument("--bootstrap", required=True, help="kafka.bootstrap_servers")
    p.add_argument("--topic", default="zimage.jobs", help="kafka.topic")
    p.add_argument("--redis", default=None, help="redis.url (records the job as queued)")
    p.add_argument("--key-prefix", default="zimage:", help="redis.key_prefix")
    p.add_argument("--job-ttl-s", type=int, default=604800, help="redis.job_ttl_s")
    p.add_argument("--prompt", required=True)
    p.add_argument("--job-id")
    p.add_argument("--negative-prompt")
    p.add_argument("--width", type=int)
    p.add_argument("--height", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--guidance", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--wait", action="store_true", help="poll the job hash until final")
    p.add_argument("-X", action="append", default=[], metavar="KEY=VALUE",
                   help="extra librdkafka property (repeatable)")
    args = p.parse_args()

    try:
        job = build_job(args)
    except ValueError as e:
        print(f"producer: error: {e}", file=sys.stderr)
        return 2
    job_id = job["job_id"]

    r = None
    if args.redis:
        if redis is None:
            print("producer: error: pip install redis (or leave out --redis)", file=sys.stderr)
            return 2
        r = redis.Redis.from_url(args.redis, decode_responses=True)
        pre = args.key_prefix
        r.eval(QUEUED_LUA, 3, f"{pre}job:{job_id}", f"{pre}cancel:{job_id}", f"{pre}events",
               args.job_ttl_s, int(time.time() * 1000), job_id)

    conf = {"bootstrap.servers": args.bootstrap, "enable.idempotence": True, "acks": "all",
            "linger.ms": 1, "client.id": "zimage-example-producer"}
    for kv in args.X:
        k, _, v = kv.partition("=")
        conf[k] = v
    producer = Producer(conf)
    outcome = {}

    def delivered(err, msg):
        outcome["err"] = err
        outcome["where"] = (msg.topic(), msg.partition(), msg.offset())

    try:
        producer.produce(args.topic, key=job_id.encode(), value=json.dumps(job).encode("utf-8"),
                         on_delivery=delivered)
        producer.flush(30)
    except KafkaException as e:
        print(f"producer: error: {e}", file=sys.stderr)
        return 1
    if outcome.get("err") is not None or "where" not in outcome:
        if r is not None:  # never leave a queued job that no worker will see
            r.delete(f"{args.key_prefix}job:{job_id}")
        print(f"producer: error: not delivered: {outcome.get('err')}", file=sys.stderr)
        return 1
    print(job_id)

    if args.wait and r is not None:
        key = f"{args.key_prefix}job:{job_id}"
        while True:
            h = r.hgetall(key)
            if h.get("status") in FINAL:
                print(json.dumps(h, indent=2, sort_keys=True))
                return 0 if h["status"] == "succeeded" else 1
            time.sleep(0.2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
