# stylediff build.
#   make          build the library, the CLI (build/stylediff) and, when nvcc exists, the CUDA path
#   make test     set up (deps), build and run every test; ends with "N passed, N failed, N skipped"
#   make demo     set up, build and run the main job on the built-in tiny model
#   make deps     install missing Debian packages (as root) or print the command to run
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
ifneq ($(NVCC),)
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

.PHONY: all test demo deps test-asan oracle clean bench
.SECONDARY:
all: $(BUILD)/stylediff $(BUILD)/libstylediff.a

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/obj/kernels/%.o: kernels/%.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVFLAGS) -c $< -o $@

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

test: deps
	@$(MAKE) --no-print-directory -j$(JOBS) all $(TEST_BIN)
	@sh tests/run_tests.sh $(TEST_BIN)

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
	rm -rf $(BUILD) build-asan

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
