/* cmd_reconstruct.c: `stylediff reconstruct -i IMAGE -p PROMPT -o OUT.png`: the reference
 * load_512 -> VAE encode -> DDIM inversion (guidance 1) -> DDIM sampling (--cfg) -> decode, with a
 * report of latent MSE and PSNR against the input. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "sd/autograd.h"
#include "sd/methods.h"

/* mean((a - b)^2) of two device tensors, computed by the backend (one scalar comes back). */
static double latent_mse(sd_ctx *c, sd_tensor *a, sd_tensor *b) {
    const sd_arena_mark mark = sd_arena_get_mark(c->arena);
    const double v = sd_item(c, sd_mse(c, a, b));
    sd_arena_reset(c->arena, mark);
    return v;
}

/* Decodes a latent into an 8-bit image as the reference's latent2image does. */
static sd_status decode_to_image(sd_ctx *c, const sd_model *m, sd_tensor *z, sd_image *out) {
    const sd_arena_mark mark = sd_arena_get_mark(c->arena);
    sd_tensor *img = sd_latent_to_image(c, m, z);
    sd_status st = sd_image_download(c, img, 0, out);
    sd_arena_reset(c->arena, mark);
    return st;
}

static cJSON *json_number_or_null(double v) { return isfinite(v) ? cJSON_CreateNumber(v) : cJSON_CreateNull(); }

int cmd_reconstruct(int argc, char **argv) {
    const char *model_path = NULL, *image_path = NULL, *prompt = NULL, *output = "reconstruction.png";
    const char *report_path = NULL, *device = NULL, *precision = NULL;
    int steps = 50, size = 0, quiet = 0, truncate = 0;
    float cfg = 1.0f;
    const cli_opt opts[] = {
        {"model", 'm', CLI_STR, &model_path, "MODEL", "diffusers folder or single-file .safetensors (default: built-in tiny model)", 1, 0},
        {"image", 'i', CLI_STR, &image_path, "FILE", "input photo, PNG or JPEG (required)", 1, 0},
        {"prompt", 'p', CLI_STR, &prompt, "TEXT", "a description of the photo (required)", 1, 0},
        {"output", 'o', CLI_STR, &output, "FILE", "reconstructed PNG (default reconstruction.png)", 1, 0},
        {"report", 0, CLI_STR, &report_path, "FILE", "JSON report (default: the output name with .json)", 1, 0},
        {"steps", 0, CLI_INT, &steps, "N", "DDIM steps for inversion and sampling (default 50)", 1, 1000},
        {"cfg", 0, CLI_FLOAT, &cfg, "W", "guidance when sampling back (default 1: the faithful round trip; 7.5 shows the drift Null-text inversion fixes)", 0, 100},
        {"size", 0, CLI_INT, &size, "PX", "side of the square crop fed to the model, multiple of 64 (default: the model's, 512 for SD v1)", 64, 2048},
        {"truncate", 0, CLI_FLAG, &truncate, NULL, "cut prompts over 75 tokens instead of failing", 1, 0},
        {"quiet", 'q', CLI_FLAG, &quiet, NULL, "no progress bar or notices", 1, 0},
        CLI_DEVICE_OPTIONS(device, precision),
    };
    const cli_command cmd = {"reconstruct", NULL, "-i IMAGE -p PROMPT [-o OUT.png] [options]",
                             "Inverts a photo with DDIM (conditional, guidance 1, as the reference's ddim_loop) and\n"
                             "samples it back; writes the reconstruction and a report: latent MSE against the\n"
                             "encoded input, PSNR of the reconstruction and of the VAE round trip alone.",
                             opts, (int)(sizeof opts / sizeof opts[0]), 0, 0};
    int n_pos;
    int r = cli_parse(&cmd, argc, argv, NULL, &n_pos);
    if (r) return r == 1 ? 0 : r;
    sd_set_quiet(quiet);
    if (!image_path || !prompt) {
        fprintf(stderr, "stylediff reconstruct: -i/--image and -p/--prompt are required\n");
        return 2;
    }
    if (size % 64) {
        fprintf(stderr, "stylediff reconstruct: --size %d: must be a multiple of 64\n", size);
        return 2;
    }
    char report_buf[4096];
    if (!report_path) {
        cli_replace_extension(report_buf, sizeof report_buf, output, ".json");
        report_path = report_buf;
    }

    /* Decode the image before loading the model, so a bad image fails fast; crop and resize it
     * once the model's native size is known. */
    sd_image original = {0}, input = {0};
    sd_status st = sd_image_load(image_path, &original);
    if (st) return cli_fail("reconstruct", st);
    sd_image_free(&original);
    sd_model m;
    st = sd_model_load(model_path, &m);
    if (st) return cli_fail("reconstruct", st);
    if (!size) size = 8 * m.unet.cfg.sample_size;
    st = sd_image_load_512(image_path, 0, 0, 0, 0, size, &input);
    if (st) {
        sd_model_free(&m);
        return cli_fail("reconstruct", st);
    }
    sd_ctx c;
    char where[256] = "";
    st = cli_check_prompt(m.tokenizer, prompt, "--prompt", truncate);
    if (st == SD_OK) st = cli_open_context(device, precision, &m, &c, where, sizeof where);
    if (st) {
        sd_image_free(&input);
        sd_model_free(&m);
        return cli_fail("reconstruct", st);
    }
    sd_ddim sched;
    st = sd_ddim_init(&sched, steps);

    double t = sd_now();
    sd_tensor *x = st == SD_OK ? sd_image_upload(&c, &input) : NULL;
    sd_tensor *z0 = st == SD_OK ? sd_keep(&c, sd_image_to_latent(&c, &m, x)) : NULL;
    sd_tensor *cond = sd_keep(&c, sd_encode_prompt(&c, &m, prompt));
    sd_tensor *uncond = sd_keep(&c, sd_encode_prompt(&c, &m, ""));
    const double time_encode = sd_now() - t;

    t = sd_now();
    sd_tensor **latents = calloc((size_t)steps + 1, sizeof *latents);
    if (st == SD_OK && !latents) st = sd_fail(SD_ERR_OOM, "out of memory");
    if (st == SD_OK && sd_ctx_status(&c) == SD_OK) st = sd_ddim_invert(&c, &m, &sched, z0, cond, latents);
    const double time_invert = sd_now() - t;

    t = sd_now();
    sd_tensor *z_rec = st == SD_OK ? sd_ddim_sample(&c, &m, &sched, latents[steps], uncond, cond, cfg) : NULL;
    const double time_sample = sd_now() - t;
    if (st == SD_OK) st = sd_ctx_status(&c);

    t = sd_now();
    sd_image recon = {0}, vae_only = {0};
    if (st == SD_OK) st = decode_to_image(&c, &m, z_rec, &recon);
    if (st == SD_OK) st = decode_to_image(&c, &m, z0, &vae_only);
    const double time_decode = sd_now() - t;
    if (st == SD_OK) st = sd_image_save_png(output, &recon);

    if (st == SD_OK) {
        const double mse = latent_mse(&c, z_rec, z0);
        const double psnr = sd_image_psnr(&recon, &input), psnr_vae = sd_image_psnr(&vae_only, &input);
        cJSON *doc = cJSON_CreateObject();
        cJSON_AddStringToObject(doc, "command", "reconstruct");
        cJSON_AddStringToObject(doc, "model", m.builtin ? "built-in tiny (random weights)" : m.files.source);
        cJSON_AddStringToObject(doc, "image", image_path);
        cJSON_AddStringToObject(doc, "prompt", prompt);
        cJSON_AddStringToObject(doc, "output", output);
        cJSON_AddStringToObject(doc, "device", where);
        cJSON_AddNumberToObject(doc, "steps", steps);
        cJSON_AddNumberToObject(doc, "cfg", cfg);
        cJSON_AddNumberToObject(doc, "size", size);
        cJSON_AddItemToObject(doc, "latent_mse", json_number_or_null(mse));
        cJSON_AddItemToObject(doc, "psnr_db", json_number_or_null(psnr));
        cJSON_AddItemToObject(doc, "psnr_vae_roundtrip_db", json_number_or_null(psnr_vae));
        cJSON *times = cJSON_AddObjectToObject(doc, "seconds");
        cJSON_AddNumberToObject(times, "encode", time_encode);
        cJSON_AddNumberToObject(times, "invert", time_invert);
        cJSON_AddNumberToObject(times, "sample", time_sample);
        cJSON_AddNumberToObject(times, "decode", time_decode);
        cJSON_AddNumberToObject(doc, "peak_activation_mib", (double)sd_arena_peak(c.arena) / (1 << 20));
        st = cli_write_json(report_path, doc);
        if (st == SD_OK) {
            printf("reconstruct %s  \"%s\"  (%d steps, cfg %.2f, %s, on %s)\n", image_path, prompt, steps, cfg,
                   m.builtin ? "built-in tiny model" : m.files.source, where);
            printf("  %-28s %s\n", "reconstruction", output);
            printf("  %-28s %s\n", "report", report_path);
            printf("  %-28s %.6g\n", "latent MSE", mse);
            printf("  %-28s %.2f dB\n", "PSNR reconstruction", psnr);
            printf("  %-28s %.2f dB\n", "PSNR VAE round trip", psnr_vae);
            printf("  %-28s encode %.2f s, invert %.2f s, sample %.2f s, decode %.2f s\n", "time",
                   time_encode, time_invert, time_sample, time_decode);
        }
    }
    free(latents);
    sd_image_free(&input);
    sd_image_free(&recon);
    sd_image_free(&vae_only);
    sd_ctx_free(&c);
    sd_model_free(&m);
    return st ? cli_fail("reconstruct", st) : 0;
}
