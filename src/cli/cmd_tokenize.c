/* cmd_tokenize.c: `stylediff tokenize PROMPT`: the 77 ids the text encoder receives, and, with
 * --word, the token positions Prompt-to-Prompt uses for that word. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "sd/model.h"
#include "sd/text.h"

int cmd_tokenize(int argc, char **argv) {
    const char *tokenizer_dir = NULL, *word = NULL;
    int no_pad = 0, show_tokens = 0, quiet = 0;
    const cli_opt opts[] = {
        {"tokenizer", 0, CLI_STR, &tokenizer_dir, "DIR", "tokenizer folder (vocab.json, merges.txt); default: the built-in CLIP vocabulary", 1, 0},
        {"word", 'w', CLI_STR, &word, "WORD", "also print the token positions of WORD (P2P's get_word_inds)", 1, 0},
        {"no-pad", 0, CLI_FLAG, &no_pad, NULL, "print only the prompt's tokens, without BOS/EOS/padding", 1, 0},
        {"tokens", 't', CLI_FLAG, &show_tokens, NULL, "print each token's text beside its id", 1, 0},
        {"quiet", 'q', CLI_FLAG, &quiet, NULL, "no warnings", 1, 0},
    };
    const cli_command cmd = {"tokenize", NULL, "[options] PROMPT",
                             "Prints the CLIP token ids of PROMPT exactly as the SD v1.x pipeline builds them:\n"
                             "BOS, tokens, EOS, padded with EOS to 77 (over-long prompts are truncated with a warning).",
                             opts, (int)(sizeof opts / sizeof opts[0]), 1, 1};
    const char *pos[1];
    int n_pos;
    int r = cli_parse(&cmd, argc, argv, pos, &n_pos);
    if (r) return r == 1 ? 0 : r;
    sd_set_quiet(quiet);
    const char *prompt = pos[0];

    sd_tokenizer *tok = NULL;
    sd_status st = sd_tokenizer_load(tokenizer_dir ? tokenizer_dir : sd_builtin_tokenizer_dir(), &tok);
    if (st) return cli_fail("tokenize", st);
    int ids[SD_CLIP_MAX_LEN];
    int n = 0;
    int *raw = NULL;
    if (no_pad) {
        st = sd_tokenize(tok, prompt, NULL, 0, &n); /* count, then fill */
        raw = malloc((size_t)(n > 0 ? n : 1) * sizeof *raw);
        if (st == SD_OK && !raw) st = sd_fail(SD_ERR_OOM, "out of memory");
        if (st == SD_OK) st = sd_tokenize(tok, prompt, raw, n, &n);
    } else {
        st = sd_tokenize_padded(tok, prompt, ids, NULL);
        n = SD_CLIP_MAX_LEN;
    }
    if (st) {
        free(raw);
        sd_tokenizer_free(tok);
        return cli_fail("tokenize", st);
    }
    const int *list = no_pad ? raw : ids;
    for (int i = 0; i < n; i++) {
        if (show_tokens) {
            char text[256];
            printf("%d\t%d\t%s\n", i, list[i], sd_token_decode(tok, list[i], text, sizeof text));
        } else {
            printf(i ? " %d" : "%d", list[i]);
        }
    }
    if (!show_tokens) printf("\n");
    if (word) {
        int inds[SD_CLIP_MAX_LEN], count = 0;
        st = sd_word_token_indices(tok, prompt, word, inds, SD_CLIP_MAX_LEN, &count);
        if (st) {
            free(raw);
            sd_tokenizer_free(tok);
            return cli_fail("tokenize", st);
        }
        printf("word '%s' at token positions:", word);
        for (int i = 0; i < count; i++) printf(" %d", inds[i]);
        printf("\n");
    }
    free(raw);
    sd_tokenizer_free(tok);
    return 0;
}
