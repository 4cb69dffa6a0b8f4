# zimage - the two commands of the README:
#   make demo   - install, build, start the local stack, run a CPU worker on the tiny model,
#                 submit jobs, print their statuses and URLs, stop everything.
#   make test   - install, build (CUDA too when nvcc is present), start the stack, run every
#                 test, stop the stack, print "N passed, N failed" as the last line.
# Neither leaves anything running unless KEEP=1. Details: docs/development.md.

JOBS ?= 2
# ZI_CUDA=AUTO|ON|OFF for build/ (default AUTO: CUDA when nvcc is found)
ZI_CUDA ?= AUTO
export JOBS KEEP ZI_CUDA

.PHONY: all deps build build-asan build-emu test demo stack-up stack-down stack-env format lint clean

all: build

deps:
	deploy/local/install-deps.sh

build:
	cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DZI_CUDA=$(ZI_CUDA)
	cmake --build build -j$(JOBS)

build-asan:
	cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DZI_SANITIZE=ON -DZI_CUDA=OFF
	cmake --build build-asan -j$(JOBS)

# The CUDA backend on the CPU emulator of CUDA (docs/cuda.md): ctest --test-dir build-emu
build-emu:
	cmake -S . -B build-emu -DCMAKE_BUILD_TYPE=RelWithDebInfo -DZI_SANITIZE=ON -DZI_CUDA=EMU -DZI_WORKER=OFF
	cmake --build build-emu -j$(JOBS)

# The whole suite; its last line is "N passed, N failed" (see tests/run-all.sh).
test:
	@tests/run-all.sh

# Written by the worker issue: deploy/local/demo.sh.
demo:
	@deploy/local/demo.sh

# The stack's Kafka broker is `zimage devbroker`: only the binary is needed.
stack-up:
	cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DZI_CUDA=$(ZI_CUDA)
	cmake --build build -j$(JOBS) --target zimage
	deploy/local/stack.sh up
	@deploy/local/stack.sh status

stack-down:
	deploy/local/stack.sh down

stack-env:
	@deploy/local/stack.sh env

format:
	tests/lint.sh format

# clang-format check + cppcheck, exactly as make test runs them.
lint:
	tests/lint.sh format-check
	tests/lint.sh cppcheck

clean:
	rm -rf build build-asan build-emu
