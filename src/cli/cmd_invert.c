/* cmd_invert.c: `stylediff invert --method M -i IMAGE -p PROMPT -o INVERSION`: inverts a photo
 * with DDIM, negative-prompt, Null-text or StyleDiffusion inversion, saves what editing needs,
 * and reports per-timestep cost and the reconstruction quality. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "sd/clip_vision.h"
#include "sd/device.h"
#include "sd/presets.h"

static double latent_mse_host(const sd_tensor *a, const sd_tensor *b) {
    double acc = 0.0;
    for (int64_t i = 0; i < sd_numel(a); i++) {
        const double d = (double)sd_f32(a)[i] - (double)sd_f32(b)[i];
        acc += d * d;
    }
    return acc / (double)sd_numel(a);
}

static cJSON *num(double v) { return isfinite(v) ? cJSON_CreateNumber(v) : cJSON_CreateNull(); }

int cmd_invert(int argc, char **argv) {
    const char *model_path = NULL, *image_path = NULL, *prompt = NULL, *output = NULL;
    const char *method_name = "stylediffusion", *config_path = NULL, *clip_dir = NULL;
    const char *recon_path = NULL, *report_path = NULL, *device = NULL, *precision = NULL;
    int steps = 0, inner = -1, seed = -1, quiet = 0, truncate = 0, no_att = 0, no_recon = 0, recompute = 0, eager = 0;
    double lr = -1.0;
    float guidance = -1.0f;
    const cli_opt opts[] = {
        {"method", 0, CLI_STR, &method_name, "M", "stylediffusion (default) | nulltext | npi | ddim", 1, 0},
        {"image", 'i', CLI_STR, &image_path, "FILE", "photo to invert, PNG or JPEG (required)", 1, 0},
        {"prompt", 'p', CLI_STR, &prompt, "TEXT", "a description of the photo (required)", 1, 0},
        {"output", 'o', CLI_STR, &output, "FILE", "inversion file to write (.safetensors; required)", 1, 0},
        {"model", 'm', CLI_STR, &model_path, "MODEL", "diffusers folder or single-file .safetensors (default: built-in tiny model)", 1, 0},
        {"clip", 0, CLI_STR, &clip_dir, "DIR", "CLIP ViT-B/16 folder (openai/clip-vit-base-patch16, safetensors) for stylediffusion", 1, 0},
        {"config", 0, CLI_STR, &config_path, "FILE", "method preset replacing the defaults (see configs/methods/)", 1, 0},
        {"steps", 0, CLI_INT, &steps, "N", "DDIM steps (default: 30 stylediffusion, 50 others)", 1, 1000},
        {"inner", 0, CLI_INT, &inner, "N", "optimiser iterations per step (stylediffusion: 100, decaying; nulltext: 10)", 0, 100000},
        {"lr", 0, CLI_DOUBLE, &lr, "X", "Adam learning rate at the first step (default 0.01)", 0, 10},
        {"cfg", 0, CLI_FLOAT, &guidance, "W", "classifier-free guidance (default 7.5)", 0, 100},
        {"seed", 0, CLI_INT, &seed, "S", "initialisation of the first mapping network (default 0)", 0, 2147483647},
        {"no-attention-loss", 0, CLI_FLAG, &no_att, NULL, "stylediffusion: train with L_rec only", 1, 0},
        {"reconstruction", 0, CLI_STR, &recon_path, "FILE", "reconstruction PNG (default: the output name with .png)", 1, 0},
        {"no-reconstruction", 0, CLI_FLAG, &no_recon, NULL, "skip sampling the reconstruction back", 1, 0},
        {"report", 0, CLI_STR, &report_path, "FILE", "JSON report (default: the output name with .json)", 1, 0},
        {"truncate", 0, CLI_FLAG, &truncate, NULL, "cut prompts over 75 tokens instead of failing", 1, 0},
        {"quiet", 'q', CLI_FLAG, &quiet, NULL, "no progress bar or notices", 1, 0},
        CLI_RECOMPUTE_OPTION(recompute),
        CLI_EAGER_OPTION(eager),
        CLI_DEVICE_OPTIONS(device, precision),
    };
    const cli_command cmd = {"invert", NULL, "--method M -i IMAGE -p PROMPT -o INVERSION [options]",
                             "Inverts a photo so that it can be edited with a new prompt (stylediff edit).\n"
                             "Writes the inversion (z_T and the per-step variables, with prompt, image hash, model\n"
                             "and settings in its metadata), a reconstruction PNG and a JSON report with the time and\n"
                             "loss of every timestep, latent MSE and PSNR of the reconstruction.",
                             opts, (int)(sizeof opts / sizeof opts[0]), 0, 0};
    int n_pos;
    int r = cli_parse(&cmd, argc, argv, NULL, &n_pos);
    if (r) return r == 1 ? 0 : r;
    sd_set_quiet(quiet);
    if (!image_path || !prompt || !output) {
        fprintf(stderr, "stylediff invert: -i/--image, -p/--prompt and -o/--output are required\n");
        return 2;
    }
    sd_invert_method method;
    sd_status st = sd_invert_method_parse(method_name, &method);
    if (st) return cli_fail("invert", st);
    sd_method_preset preset;
    sd_method_preset_default(method, &preset);
    if (config_path && (st = sd_method_preset_load(config_path, &preset))) return cli_fail("invert", st);
    sd_invert_options o = preset.invert;
    o.method = method;
    if (steps) o.n_steps = steps;
    if (inner >= 0) o.inner_steps = inner;
    if (lr >= 0) o.lr = lr;
    if (guidance >= 0) o.guidance = guidance;
    if (seed >= 0) o.seed = (uint64_t)seed;
    if (no_att) o.attention_loss = 0;
    char recon_buf[4096], report_buf[4096];
    if (!recon_path) {
        cli_replace_extension(recon_buf, sizeof recon_buf, output, ".png");
        recon_path = recon_buf;
    }
    if (!report_path) {
        cli_replace_extension(report_buf, sizeof report_buf, output, ".json");
        report_path = report_buf;
    }

    /* decode the image first: a bad image fails before anything slow */
    sd_image original = {0};
    if ((st = sd_image_load(image_path, &original))) return cli_fail("invert", st);
    sd_image_free(&original);
    sd_model m;
    if ((st = sd_model_load(model_path, &m))) return cli_fail("invert", st);
    sd_clip_vision clip;
    memset(&clip, 0, sizeof clip);
    int have_clip = 0;
    if (method == SD_INVERT_STYLEDIFFUSION) {
        if (!clip_dir && !m.builtin)
            st = sd_fail(SD_ERR_ARG, "stylediffusion needs the CLIP ViT-B/16 image encoder: pass --clip DIR "
                                     "(a local copy of openai/clip-vit-base-patch16 with model.safetensors)");
        else if ((st = sd_clip_vision_load(clip_dir ? clip_dir : sd_builtin_clip_vision_dir(), &clip)) == SD_OK)
            have_clip = 1;
    }
    const int size = 8 * m.unet.cfg.sample_size;
    sd_image input = {0};
    if (!st) st = cli_check_prompt(m.tokenizer, prompt, "--prompt", truncate);
    if (!st) st = sd_image_load_512(image_path, 0, 0, 0, 0, size, &input);
    sd_ctx c;
    char where[256] = "";
    int have_ctx = 0;
    if (!st && !(st = cli_open_context(device, precision, &m, &c, where, sizeof where))) have_ctx = 1;
    if (have_ctx) {
        c.recompute = recompute;
        c.eager = eager;
    }
    if (!st && have_clip) st = sd_ctx_adopt_weights(&c, clip.owned);

    sd_inversion inv;
    memset(&inv, 0, sizeof inv);
    sd_tensor *x = NULL, *features = NULL;
    if (!st) {
        x = sd_keep(&c, sd_image_upload(&c, &input));
        const sd_arena_mark act = sd_arena_get_mark(c.arena);
        if (have_clip) features = sd_keep(&c, sd_clip_vision_encode(&c, &clip, x));
        sd_arena_reset(c.arena, act); /* only the kept features outlive the encoder */
        if (!st) st = sd_ctx_status(&c);
    }
    if (!st) st = sd_invert(&c, &m, &o, x, prompt, features, &inv);
    if (!st) {
        inv.image_hash = sd_hash64(input.data, (size_t)input.width * input.height * 3);
        inv.image_size = size;
        st = sd_inversion_save(&inv, output);
    }
    /* the inversion is on disk; the reconstruction and report come after it */
    double mse = NAN, psnr = NAN;
    double t_recon = 0.0;
    if (!st && !no_recon) {
        const double t0 = sd_now();
        sd_tensor *z = sd_inversion_reconstruct(&c, &m, &inv);
        sd_tensor *img = sd_latent_to_image(&c, &m, z);
        sd_image out_img = {0};
        sd_tensor *z_host = z ? sd_download_new(&c, z) : NULL;
        st = sd_ctx_status(&c);
        if (!st) st = sd_image_download(&c, img, 0, &out_img);
        if (!st) st = sd_image_save_png(recon_path, &out_img);
        if (!st) {
            mse = latent_mse_host(z_host, inv.z0);
            psnr = sd_image_psnr(&out_img, &input);
        }
        sd_tensor_free(z_host);
        sd_image_free(&out_img);
        t_recon = sd_now() - t0;
    }
    if (!st) {
        cJSON *doc = cJSON_CreateObject();
        cJSON_AddStringToObject(doc, "command", "invert");
        cJSON_AddStringToObject(doc, "method", sd_invert_method_name(method));
        cJSON_AddStringToObject(doc, "model", inv.model_id);
        cJSON_AddStringToObject(doc, "image", image_path);
        cJSON_AddStringToObject(doc, "prompt", prompt);
        cJSON_AddStringToObject(doc, "inversion", output);
        cJSON_AddStringToObject(doc, "device", where);
        cJSON_AddNumberToObject(doc, "steps", o.n_steps);
        cJSON_AddNumberToObject(doc, "guidance", o.guidance);
        cJSON_AddNumberToObject(doc, "size", size);
        /* the optimisation's share: what is left after the encoders and the DDIM inversion */
        const double seconds_opt = inv.seconds_total - inv.seconds_encode - inv.seconds_ddim;
        cJSON_AddItemToObject(doc, "seconds_total", num(inv.seconds_total));
        cJSON_AddItemToObject(doc, "seconds_encode", num(inv.seconds_encode));
        cJSON_AddItemToObject(doc, "seconds_ddim_inversion", num(inv.seconds_ddim));
        cJSON_AddItemToObject(doc, "seconds_per_timestep", num(seconds_opt / o.n_steps));
        cJSON_AddItemToObject(doc, "seconds_reconstruction", num(t_recon));
        cJSON_AddItemToObject(doc, "latent_mse", num(mse));
        cJSON_AddItemToObject(doc, "psnr_db", num(psnr));
        cJSON *steps_json = cJSON_AddArrayToObject(doc, "timesteps");
        int total_iterations = 0;
        for (int i = 0; i < o.n_steps; i++) {
            cJSON *s = cJSON_CreateObject();
            cJSON_AddNumberToObject(s, "t", inv.stats[i].t);
            cJSON_AddNumberToObject(s, "iterations", inv.stats[i].iterations);
            cJSON_AddItemToObject(s, "first_loss", num(inv.stats[i].first_loss));
            cJSON_AddItemToObject(s, "last_loss", num(inv.stats[i].last_loss));
            cJSON_AddItemToObject(s, "seconds", num(inv.stats[i].seconds));
            cJSON_AddItemToArray(steps_json, s);
            total_iterations += inv.stats[i].iterations;
        }
        cJSON_AddNumberToObject(doc, "optimizer_iterations", total_iterations);
        cJSON_AddNumberToObject(doc, "graph_replayed_iterations", inv.graph_steps);
        st = cli_write_json(report_path, doc);
        if (!st) {
            printf("invert %s  \"%s\"  method %s, %d steps, cfg %.2g (%s)\n", image_path, prompt,
                   sd_invert_method_name(method), o.n_steps, o.guidance, inv.model_id);
            printf("  %-26s %s\n", "inversion", output);
            if (!no_recon) printf("  %-26s %s\n", "reconstruction", recon_path);
            printf("  %-26s %s\n", "report", report_path);
            printf("  %-26s %s\n", "device", where);
            printf("  %-26s %.2f s (encode %.2f s, DDIM inversion %.2f s, %.3f s per timestep, %d optimiser "
                   "iterations)\n",
                   "time", inv.seconds_total, inv.seconds_encode, inv.seconds_ddim, seconds_opt / o.n_steps,
                   total_iterations);
            if (inv.gradient_steps > 0)
                printf("  %-26s %d of %d replayed from a CUDA graph%s\n", "optimiser iterations", inv.graph_steps,
                       inv.gradient_steps, sd_ctx_on_cuda(&c) && c.eager ? " (--eager)" : "");
            if (!no_recon) printf("  %-26s latent MSE %.6g, PSNR %.2f dB\n", "reconstruction", mse, psnr);
        }
    }
    sd_inversion_free(&inv);
    sd_image_free(&input);
    if (have_ctx) sd_ctx_free(&c);
    if (have_clip) sd_clip_vision_release(&clip);
    sd_model_free(&m);
    return st ? cli_fail("invert", st) : 0;
}
