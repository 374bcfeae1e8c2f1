/* main.c: `stylediff <command> [options]`: dispatches to one file per subcommand. */
#include <stdio.h>
#include <string.h>

#include "cli.h"

typedef struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} command_entry;

static const command_entry commands[] = {
    {"generate", cmd_generate, "prompt -> image (DDIM sampling with classifier-free guidance)"},
    {"reconstruct", cmd_reconstruct, "image + prompt -> DDIM inversion -> DDIM sampling -> PNG + report"},
    {"invert", cmd_invert, "image + prompt -> inversion (stylediffusion, nulltext, npi, ddim) + reconstruction + report"},
    {"edit", cmd_edit, "inversion + target prompt -> edited PNG (Prompt-to-Prompt / P2Plus), heatmaps"},
    {"batch", cmd_batch, "run an editing CSV (the reference's dataset format): invert + edit every row"},
    {"eval", cmd_eval, "score a batch's results: PSNR/SSIM, CLIPScore, Structure-dist, NS-LPIPS"},
    {"tokenize", cmd_tokenize, "print the CLIP token ids of a prompt (and a word's token positions)"},
    {"bench", cmd_bench, "bench unet | invert | grad: UNet calls, inversion cost per method, one gradient step"},
};

static void usage(FILE *out) {
    fprintf(out, "usage: stylediff <command> [options]\n\n"
                 "Text-based editing of real images with Stable Diffusion v1.x.\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(out, "  %-12s %s\n", commands[i].name, commands[i].summary);
    fprintf(out, "\n'stylediff <command> --help' describes each command's options.\n"
                 "Without -m, commands use the built-in tiny model (random weights).\n");
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[1], commands[i].name)) return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "stylediff: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}
