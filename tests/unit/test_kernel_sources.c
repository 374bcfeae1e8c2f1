/* test_kernel_sources.c: rules of the CUDA sources that no compiler checks, read from kernels/.
 *
 * Programmatic dependent launch (SD_CUDA_PDL=1, kernels/cuda_common.cuh) lets a kernel's blocks be
 * scheduled before the previous kernel in the stream has finished. That is only correct when the
 * kernel waits for it (griddepcontrol.wait) before touching global memory, so every __global__
 * function of the backend must begin with CU_PDL_ENTRY(). A kernel that does not would race with
 * its predecessor only on a Hopper GPU with the setting on: nothing in CI would see it, hence this
 * check on the sources. Runs from the repository root, as every test does. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

/* The source with comments and string and character literals blanked out (same length), so that
 * neither a comment mentioning __global__ nor a string can be taken for code. */
static char *code_only(const char *src) {
    const size_t n = strlen(src);
    char *out = malloc(n + 1);
    assert_non_null(out);
    memcpy(out, src, n + 1);
    for (size_t i = 0; i < n;) {
        if (src[i] == '/' && src[i + 1] == '/') {
            while (i < n && src[i] != '\n') out[i++] = ' ';
        } else if (src[i] == '/' && src[i + 1] == '*') {
            out[i] = out[i + 1] = ' ';
            i += 2;
            while (i < n && !(src[i] == '*' && src[i + 1] == '/')) {
                if (src[i] != '\n') out[i] = ' ';
                i++;
            }
            if (i < n) out[i] = out[i + 1] = ' ', i += 2;
        } else if (src[i] == '"' || src[i] == '\'') {
            const char q = src[i++];
            while (i < n && src[i] != q) {
                if (src[i] == '\\' && i + 1 < n) out[i++] = ' ';
                if (src[i] != '\n') out[i] = ' ';
                i++;
            }
            i++;
        } else {
            i++;
        }
    }
    return out;
}

static int line_of(const char *src, const char *at) {
    int line = 1;
    for (const char *p = src; p < at; p++) line += *p == '\n';
    return line;
}

/* Counts the __global__ functions of `src` and reports (by name and line, into *bad and the test
 * output) those whose body does not start with CU_PDL_ENTRY(); the number of kernels found. */
static int check_kernels(const char *file, const char *src, int *bad) {
    char *code = code_only(src);
    int kernels = 0;
    for (const char *p = strstr(code, "__global__"); p; p = strstr(p + 1, "__global__")) {
        const char *after = p + strlen("__global__");
        if ((p > code && (p[-1] == '_' || (p[-1] >= 'a' && p[-1] <= 'z') || (p[-1] >= 'A' && p[-1] <= 'Z'))) ||
            *after == '_')
            continue; /* part of a longer name */
        const char *open = strchr(after, '{'), *semi = strchr(after, ';');
        if (!open || (semi && semi < open)) continue; /* a declaration, no body */
        kernels++;
        const char *body = open + 1;
        while (*body == ' ' || *body == '\t' || *body == '\n' || *body == '\r') body++;
        if (strncmp(body, "CU_PDL_ENTRY();", strlen("CU_PDL_ENTRY();")) != 0) {
            /* the name precedes the parameter list, the parenthesis that closes before the body */
            const char *name_end = open;
            while (name_end > after && *name_end != ')') name_end--;
            for (int depth = 0; name_end > after; name_end--) {
                depth += (*name_end == ')') - (*name_end == '(');
                if (depth == 0) break;
            }
            const char *name = name_end;
            while (name > after && (name[-1] == '_' || (name[-1] >= 'a' && name[-1] <= 'z') ||
                                    (name[-1] >= 'A' && name[-1] <= 'Z') || (name[-1] >= '0' && name[-1] <= '9')))
                name--;
            print_message("    %s:%d: kernel %.*s does not begin with CU_PDL_ENTRY();\n", file, line_of(code, p),
                          (int)(name_end - name), name);
            (*bad)++;
        }
    }
    free(code);
    return kernels;
}

static char *read_all(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) fail_msg("%s: cannot open (the tests run from the repository root)", path);
    fseek(f, 0, SEEK_END);
    const long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    assert_non_null(s);
    assert_int_equal(fread(s, 1, (size_t)n, f), (size_t)n);
    s[n] = 0;
    fclose(f);
    return s;
}

/* The checker itself: a kernel without the entry, one with it after a statement, and comments and
 * strings that mention __global__, against a conforming kernel. */
static void test_checker_finds_a_missing_entry(void **state) {
    (void)state;
    const char *src = "// __global__ void not_code() {}\n"
                      "/* __global__ void neither() { } */\n"
                      "static const char *s = \"__global__ void nor() {\";\n"
                      "__global__ void k_ok(float *x) {\n    CU_PDL_ENTRY();\n    x[0] = 1;\n}\n"
                      "template <int N> __global__ void __launch_bounds__(N) k_late(float *x) {\n"
                      "    x[0] = 1;\n    CU_PDL_ENTRY();\n}\n"
                      "__global__ void k_none(float *x) { x[0] = 2; }\n"
                      "__global__ void k_declared(float *x);\n";
    int bad = 0;
    assert_int_equal(check_kernels("example.cu", src, &bad), 3);
    assert_int_equal(bad, 2);
}

static void test_every_kernel_waits_for_its_predecessor(void **state) {
    (void)state;
    DIR *d = opendir("kernels");
    if (!d) fail_msg("kernels/: cannot open (the tests run from the repository root)");
    int files = 0, kernels = 0, bad = 0;
    for (struct dirent *e; (e = readdir(d));) {
        const size_t len = strlen(e->d_name);
        const int cu = len > 3 && !strcmp(e->d_name + len - 3, ".cu");
        const int cuh = len > 4 && !strcmp(e->d_name + len - 4, ".cuh");
        if (!cu && !cuh) continue;
        char path[512];
        snprintf(path, sizeof path, "kernels/%s", e->d_name);
        char *src = read_all(path);
        kernels += check_kernels(path, src, &bad);
        files++;
        free(src);
    }
    closedir(d);
    print_message("    %d kernels in %d files of kernels/, %d without CU_PDL_ENTRY() first\n", kernels, files, bad);
    assert_true(files >= 8);
    assert_true(kernels >= 84); /* the backend had 84 when this test was written */
    assert_int_equal(bad, 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_checker_finds_a_missing_entry),
        cmocka_unit_test(test_every_kernel_waits_for_its_predecessor),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
