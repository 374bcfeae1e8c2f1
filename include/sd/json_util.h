/* json_util.h: the JSON pieces every config reader shares (cJSON underneath), so that every
 * malformed file is reported the same way: file, line and column, or file, key and type. */
#ifndef SD_JSON_UTIL_H
#define SD_JSON_UTIL_H

#include <cjson/cJSON.h>

#include "sd/core.h"

/* "a string", "a number", "null", ...: what a value is, for messages. */
const char *sd_json_kind(const cJSON *v);

/* Parses `json` (text of the file `path`) that must hold one JSON object and nothing else.
 * Fails with SD_ERR_FORMAT naming the path and the line and column of the problem. */
sd_status sd_json_parse_object(const char *json, const char *path, cJSON **out);

#endif
