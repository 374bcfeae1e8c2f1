/* csv_rows.h: reading the reference's editing CSV (data/stylediffusion_editing.csv of
 * sen-mao/StyleDiffusion): header
 *   ,case_number,prompt,image_path,url,target,blend_word,eq_params,tau_v,tau_c,tau_s,tau_u,edit_type
 * with Python literals in some cells: blend_word "[('cat',),('tiger',)]", eq_params
 * "[('tiger',),(2,)]", taus "[.5,]", edit_type Replacement | Refinement. */
#ifndef SD_CLI_CSV_ROWS_H
#define SD_CLI_CSV_ROWS_H

#include "sd/core.h"

#define CSV_MAX_COLUMNS 32
#define CSV_MAX_WORDS 8

typedef struct csv_table {
    int n_columns, n_rows;
    char **header;   /* n_columns */
    char ***cells;   /* n_rows x n_columns (missing trailing cells are NULL) */
    int *line;       /* first line of each row in the file, for messages */
    char *storage;
} csv_table;

/* RFC 4180: quoted cells, doubled quotes, commas and newlines inside quotes. Fails naming the
 * file and line on an unterminated quote. */
sd_status csv_read(const char *path, csv_table *out);
void csv_free(csv_table *t);
/* The cell of `row` in column `name`, NULL when the column does not exist or the row lacks it. */
const char *csv_cell(const csv_table *t, int row, const char *name);

/* One edit of the CSV, decoded. */
typedef struct csv_edit {
    long case_number;
    const char *prompt, *image_path, *target;
    int refine;                       /* edit_type Refinement */
    const char *blend[2][CSV_MAX_WORDS]; /* words of the source, then the target prompt */
    int n_blend[2];
    const char *eq_words[CSV_MAX_WORDS];
    double eq_values[CSV_MAX_WORDS];
    int n_eq;
    double tau_v, tau_c, tau_s, tau_u; /* NAN when the column is absent */
    char literal_storage[1024];       /* the words point into here */
} csv_edit;

/* Decodes row `row`; fails with SD_ERR_FORMAT naming the line and the column. */
sd_status csv_edit_decode(const csv_table *t, int row, const char *path, csv_edit *out);

#endif
