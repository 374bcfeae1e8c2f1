/* cmd_generate.c: `stylediff generate -p PROMPT -o OUT.png`: text-to-image with DDIM and
 * classifier-free guidance, the initial latent drawn as torch.randn with the same seed. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "sd/methods.h"

int cmd_generate(int argc, char **argv) {
    const char *model_path = NULL, *prompt = NULL, *output = "generated.png";
    const char *device = NULL, *precision = NULL;
    int steps = 50, seed = 0, size = 0, quiet = 0, truncate = 0;
    float cfg = 7.5f;
    const cli_opt opts[] = {
        {"model", 'm', CLI_STR, &model_path, "MODEL", "diffusers folder or single-file .safetensors (default: built-in tiny model)", 1, 0},
        {"prompt", 'p', CLI_STR, &prompt, "TEXT", "what to draw (required)", 1, 0},
        {"output", 'o', CLI_STR, &output, "FILE", "output PNG (default generated.png)", 1, 0},
        {"steps", 0, CLI_INT, &steps, "N", "DDIM steps (default 50)", 1, 1000},
        {"cfg", 0, CLI_FLOAT, &cfg, "W", "classifier-free guidance scale (default 7.5)", 0, 100},
        {"seed", 0, CLI_INT, &seed, "S", "seed of the initial latent, as torch.manual_seed (default 0)", 0, 2147483647},
        {"size", 0, CLI_INT, &size, "PX", "image side in pixels, a multiple of 64 (default: the model's, 512 for SD v1)", 64, 2048},
        {"truncate", 0, CLI_FLAG, &truncate, NULL, "cut prompts over 75 tokens instead of failing", 1, 0},
        {"quiet", 'q', CLI_FLAG, &quiet, NULL, "no progress bar or notices", 1, 0},
        CLI_DEVICE_OPTIONS(device, precision),
    };
    const cli_command cmd = {"generate", NULL, "-p PROMPT [-o OUT.png] [options]",
                             "Generates an image from a prompt: torch-compatible random latent, DDIM sampling\n"
                             "with classifier-free guidance (eta 0, steps_offset 1), VAE decode.",
                             opts, (int)(sizeof opts / sizeof opts[0]), 0, 0};
    int n_pos;
    int r = cli_parse(&cmd, argc, argv, NULL, &n_pos);
    if (r) return r == 1 ? 0 : r;
    sd_set_quiet(quiet);
    if (!prompt) {
        fprintf(stderr, "stylediff generate: -p/--prompt is required\n");
        return 2;
    }
    if (size % 64) {
        fprintf(stderr, "stylediff generate: --size %d: must be a multiple of 64\n", size);
        return 2;
    }

    sd_model m;
    sd_status st = sd_model_load(model_path, &m);
    if (st) return cli_fail("generate", st);
    st = cli_check_prompt(m.tokenizer, prompt, "--prompt", truncate);
    sd_ctx c;
    char where[256] = "";
    if (st == SD_OK) st = cli_open_context(device, precision, &m, &c, where, sizeof where);
    if (st) {
        sd_model_free(&m);
        return cli_fail("generate", st);
    }
    const int latent_side = size ? size / 8 : m.unet.cfg.sample_size;
    sd_ddim sched;
    st = sd_ddim_init(&sched, steps);

    const double t0 = sd_now();
    sd_tensor *cond = sd_keep(&c, sd_encode_prompt(&c, &m, prompt));
    sd_tensor *uncond = sd_keep(&c, sd_encode_prompt(&c, &m, ""));
    /* the initial latent as torch.randn draws it on the host, then on the device */
    sd_tensor *noise = sd_tensor_new4(SD_F32, 4, 1, m.unet.cfg.in_channels, latent_side, latent_side);
    sd_tensor *z_T = NULL;
    if (st == SD_OK && noise) {
        sd_rng rng;
        sd_rng_seed(&rng, (uint64_t)seed);
        sd_rng_randn(&rng, sd_f32(noise), sd_numel(noise));
        z_T = sd_upload(&c, noise);
    }
    sd_tensor_free(noise);
    sd_tensor *z0 = st == SD_OK ? sd_ddim_sample(&c, &m, &sched, z_T, uncond, cond, cfg) : NULL;
    sd_tensor *img = sd_latent_to_image(&c, &m, z0);
    if (st == SD_OK) st = sd_ctx_status(&c);
    sd_image out = {0};
    if (st == SD_OK) st = sd_image_download(&c, img, 0, &out);
    if (st == SD_OK) st = sd_image_save_png(output, &out);
    if (st == SD_OK && !quiet)
        printf("wrote %s (%dx%d, %d steps, cfg %.2f, seed %d) in %.1f s on %s\n", output, out.width,
               out.height, steps, cfg, seed, sd_now() - t0, where);
    sd_image_free(&out);
    sd_ctx_free(&c);
    sd_model_free(&m);
    return st ? cli_fail("generate", st) : 0;
}
