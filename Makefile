# zimage - the two commands of the README:
#   make demo   - install, build, start the local stack, run a CPU worker on the tiny model,
#                 submit three jobs, print their statuses and URLs, stop everything.
#   make test   - install, build (CUDA too when nvcc is present), start the stack, run every
#                 test, stop the stack, print "N passed, N failed".
# (owned by the foundation issue; see docs/development.md)

JOBS ?= 2

.PHONY: all build build-asan test demo clean

all: build

build:
	cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
	cmake --build build -j$(JOBS)

build-asan:
	cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DZI_SANITIZE=ON -DZI_CUDA=OFF
	cmake --build build-asan -j$(JOBS)

clean:
	rm -rf build build-asan
