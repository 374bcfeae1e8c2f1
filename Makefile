# stylediff build.
#   make          build the library, the CLI (build/stylediff) and, when nvcc exists, the CUDA path
#   make test     set up (deps), build and run every test; ends with "N passed, N failed, N skipped"
#   make demo     set up, build and run the main job on the built-in tiny model
#   make deps     install missing Debian packages (as root) or print the command to run
#   make sim-test   the CUDA backend's tests on the host simulator of the GPU (tools/cudasim), alone
#   make test-asan  parser tests under AddressSanitizer + UndefinedBehaviorSanitizer
#   make oracle   regenerate the committed fixtures with the PyTorch oracle (needs .venv; CI never runs it)

CC      ?= gcc
BUILD   ?= build
JOBS    ?= $(shell nproc 2>/dev/null || echo 2)
OPT     ?= -O2 -march=x86-64-v2
CFLAGS  += -DSD_SOURCE_DIR=\"$(CURDIR)\" -std=c11 -D_GNU_SOURCE $(OPT) -g -Wall -Wextra -Wno-unused-parameter -Wno-format-truncation -fopenmp -Iinclude -Itests/unit/helpers -MMD -MP
LDLIBS  += -lopenblas -lcjson -lpng -ljpeg -lm -fopenmp
# cblas.h lives in an OpenBLAS subfolder on Debian.
CFLAGS  += $(shell pkg-config --cflags openblas 2>/dev/null || echo -I/usr/include/x86_64-linux-gnu/openblas-pthread)

NVCC    := $(shell command -v nvcc 2>/dev/null || (test -x /usr/local/cuda/bin/nvcc && echo /usr/local/cuda/bin/nvcc))
CUDA_SRC := $(wildcard kernels/*.cu)
# SIM=1 (make sim-test, folder build-sim): the CUDA backend compiled by g++ against the host
# simulator of CUDA, cuBLAS, cuBLASLt and cuDNN in tools/cudasim, so CI runs every kernel.
SIM_SRC := tools/cudasim/cudasim_runtime.cpp tools/cudasim/cudasim_rounding.cpp tools/cudasim/cublas_sim.cpp \
           tools/cudasim/cudnn_sim.cpp
ifeq ($(SIM),1)
  CFLAGS  += -DSD_HAVE_CUDA -DSD_CUDA_SIM
  SIM_CXXFLAGS := -std=c++17 -O3 -march=native -g -fopenmp -DSD_CUDA_SIM -Itools/cudasim/include -Iinclude -MMD -MP -Wall -Wextra \
                  -Wno-unused-parameter -Wno-unknown-pragmas -fno-strict-aliasing
  LDLIBS  += -lstdc++
  CUDA_OBJ := $(patsubst kernels/%.cu,$(BUILD)/obj/kernels/%.o,$(CUDA_SRC)) $(patsubst %.cpp,$(BUILD)/obj/%.o,$(SIM_SRC))
else ifneq ($(NVCC),)
ifneq ($(CUDA_SRC),)
  CUDA_HOME := $(patsubst %/bin/nvcc,%,$(NVCC))
  CFLAGS  += -DSD_HAVE_CUDA -I$(CUDA_HOME)/include
  NVFLAGS := -O3 -std=c++17 -Iinclude -MMD -MP -lineinfo -gencode arch=compute_90,code=sm_90 -gencode arch=compute_90,code=compute_90 -Xcompiler -fPIC
  LDLIBS  += -L$(CUDA_HOME)/lib64 -L$(CUDA_HOME)/lib64/stubs -lcublas -lcublasLt -lcudnn -lcudart -lstdc++ -Wl,-rpath,$(CUDA_HOME)/lib64
  CUDA_OBJ := $(patsubst kernels/%.cu,$(BUILD)/obj/kernels/%.o,$(CUDA_SRC))
endif
endif

LIB_SRC  := $(filter-out src/cli/%,$(wildcard src/*/*.c src/*/*/*.c))
CLI_SRC  := $(wildcard src/cli/*.c)
LIB_OBJ  := $(patsubst %.c,$(BUILD)/obj/%.o,$(LIB_SRC)) $(CUDA_OBJ)
CLI_OBJ  := $(patsubst %.c,$(BUILD)/obj/%.o,$(CLI_SRC))
TEST_SRC := $(wildcard tests/unit/test_*.c)
TEST_BIN := $(patsubst tests/unit/%.c,$(BUILD)/tests/%,$(TEST_SRC))
TEST_HELPERS := $(patsubst %.c,$(BUILD)/obj/%.o,$(wildcard tests/unit/helpers/*.c))

.PHONY: all test sim-test demo deps test-asan oracle clean bench
.SECONDARY:
all: $(BUILD)/stylediff $(BUILD)/libstylediff.a

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/obj/kernels/%.o: kernels/%.cu
	@mkdir -p $(dir $@)
ifeq ($(SIM),1)
	$(CXX) $(SIM_CXXFLAGS) -x c++ -c $< -o $@
else
	$(NVCC) $(NVFLAGS) -c $< -o $@
endif

$(BUILD)/obj/tools/cudasim/%.o: tools/cudasim/%.cpp
	@mkdir -p $(dir $@)
	$(CXX) $(SIM_CXXFLAGS) -c $< -o $@

$(BUILD)/libstylediff.a: $(LIB_OBJ)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

$(BUILD)/stylediff: $(CLI_OBJ) $(BUILD)/libstylediff.a
	$(CC) $(CFLAGS) -o $@ $(CLI_OBJ) $(BUILD)/libstylediff.a $(LDLIBS)

$(BUILD)/tests/%: tests/unit/%.c $(TEST_HELPERS) $(BUILD)/libstylediff.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(TEST_HELPERS) $(BUILD)/libstylediff.a $(LDLIBS) -lcmocka

deps:
	@sh tools/deps.sh

# The CUDA backend under the host simulator (tools/cudasim, build-sim/): the simulator's own
# checks, then every test with GPU cases, which the simulated device runs instead of skipping.
# test_cuda_ops and test_cuda_f16 run twice: the second time the threads of a block run last to
# first between barriers (CUDASIM_SCHEDULE=reverse), so a kernel that reads shared memory without
# the barrier it needs gives a different result in one of the two runs.
SIM_TEST_BIN := build-sim/tests/test_cudasim_runtime build-sim/tests/test_cudasim_libs build-sim/tests/test_cuda_ops \
                build-sim/tests/test_cuda_ops_reverse build-sim/tests/test_device_parity build-sim/tests/test_lpips \
                build-sim/tests/test_cli_gpu build-sim/tests/test_step_graph build-sim/tests/test_cuda_f16 \
                build-sim/tests/test_cuda_f16_reverse

test: deps
	@$(MAKE) --no-print-directory -j$(JOBS) all $(TEST_BIN)
	@$(MAKE) --no-print-directory -j$(JOBS) BUILD=build-sim SIM=1 build-sim/stylediff $(SIM_TEST_BIN)
	@sh tests/run_tests.sh $(TEST_BIN) $(SIM_TEST_BIN)

sim-test: deps
	@$(MAKE) --no-print-directory -j$(JOBS) BUILD=build-sim SIM=1 build-sim/stylediff $(SIM_TEST_BIN)
	@sh tests/run_tests.sh $(SIM_TEST_BIN)

$(BUILD)/tests/%_reverse: $(BUILD)/tests/%
	@printf '#!/bin/sh\necho "$* with the threads of each block scheduled last to first (CUDASIM_SCHEDULE=reverse)"\nCUDASIM_SCHEDULE=reverse exec "$$(dirname "$$0")/$*" "$$@"\n' > $@ && chmod +x $@

$(BUILD)/tests/test_cudasim_runtime: tools/cudasim/test_cudasim_runtime.cpp $(BUILD)/obj/tools/cudasim/cudasim_runtime.o \
                                     $(BUILD)/obj/tools/cudasim/cudasim_rounding.o
	@mkdir -p $(dir $@)
	$(CXX) $(SIM_CXXFLAGS) -o $@ $^

$(BUILD)/tests/test_cudasim_libs: tools/cudasim/test_cudasim_libs.cpp tools/cudasim/test_cudasim_libs_stubs.cpp \
                                  $(BUILD)/obj/tools/cudasim/cublas_sim.o $(BUILD)/obj/tools/cudasim/cudnn_sim.o \
                                  $(BUILD)/obj/tools/cudasim/cudasim_rounding.o
	@mkdir -p $(dir $@)
	$(CXX) $(SIM_CXXFLAGS) -o $@ $^

demo: deps
	@$(MAKE) --no-print-directory -j$(JOBS) all
	@sh tools/demo.sh

# Parser and loader tests under ASan + UBSan, in a separate build folder.
test-asan: deps
	@$(MAKE) --no-print-directory BUILD=build-asan OPT="-O1 -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" \
	    LDLIBS="$(LDLIBS) -fsanitize=address,undefined" CUDA_SRC= build-asan/tests/test_safetensors build-asan/tests/test_config build-asan/tests/test_image build-asan/tests/test_tokenizer build-asan/tests/test_loader
	@ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 sh tests/run_tests.sh build-asan/tests/test_safetensors build-asan/tests/test_config build-asan/tests/test_image build-asan/tests/test_tokenizer build-asan/tests/test_loader

oracle:
	@sh tests/oracle/run_all.sh

bench: all
	@sh bench/run_cpu.sh

clean:
	rm -rf $(BUILD) build-asan build-sim

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
