/*
 * basic.c - the smallest complete use of libgoxelpool.
 *
 * Creates a client, asks the daemon for its version, creates a project, adds a few voxels, reads
 * one back and checks it, prints the pool's statistics, then closes and frees the client.
 *
 * Ownership, as in jansson: every value we create or receive as a "new reference" is
 * json_decref'd exactly once; values passed to the library are "borrowed" (the library keeps no
 * reference), so we may free them as soon as the call returns.
 *
 *   cc -Wall -Wextra -Werror basic.c $(pkg-config --cflags --libs goxelpool) -o basic
 *   ./basic [/path/to/goxel-daemon.sock]
 */
#include <goxelpool.h>
#include <jansson.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Prints why a call failed. rpc_error may be NULL; it is not freed here. */
static void report(const char *what, goxelpool_status st, const json_t *rpc_error) {
    fprintf(stderr, "basic: %s failed: %s (%s): %s\n", what, goxelpool_status_name(st),
            goxelpool_strerror(st), goxelpool_last_error());
    if (rpc_error) {
        char *text = json_dumps(rpc_error, JSON_COMPACT);
        fprintf(stderr, "basic:   daemon error: %s\n", text ? text : "?");
        free(text);
    }
}

/* Calls method with params (params is borrowed: the caller still owns it). On success returns
 * the result as a new reference (the caller must json_decref it); on failure reports and returns
 * NULL. */
static json_t *call(goxelpool_client *client, const char *method, const json_t *params) {
    json_t *result = NULL, *rpc_error = NULL;
    goxelpool_status st = goxelpool_call(client, method, params, -1, &result, &rpc_error);
    if (st != GOXELPOOL_OK) {
        report(method, st, rpc_error);
        json_decref(rpc_error); /* NULL-safe */
        return NULL;
    }
    return result;
}

/* The daemon reports a colour as [r,g,b,a], {"r":..,"g":..,"b":..,"a":..} or "#RRGGBB[AA]". */
static int color_equals(const json_t *color, const int want[4]) {
    int got[4] = {-1, -1, -1, 255};
    if (json_is_array(color) && json_array_size(color) >= 3) {
        for (size_t i = 0; i < 4 && i < json_array_size(color); i++)
            got[i] = (int)json_integer_value(json_array_get(color, i));
    } else if (json_is_object(color)) {
        const char *keys[4] = {"r", "g", "b", "a"};
        for (int i = 0; i < 4; i++) {
            json_t *v = json_object_get(color, keys[i]);
            if (v) got[i] = (int)json_integer_value(v);
        }
    } else if (json_is_string(color)) {
        const char *s = json_string_value(color);
        unsigned r, g, b, a = 255;
        int n = sscanf(s, "#%2x%2x%2x%2x", &r, &g, &b, &a);
        if (n < 3) return 0;
        got[0] = (int)r; got[1] = (int)g; got[2] = (int)b; got[3] = (int)a;
    } else {
        return 0;
    }
    return got[0] == want[0] && got[1] == want[1] && got[2] == want[2] && got[3] == want[3];
}

int main(int argc, char **argv) {
    const char *socket_path = argc > 1 ? argv[1] : "/tmp/goxel-daemon.sock";
    int status = EXIT_FAILURE;
    json_t *result = NULL;

    printf("libgoxelpool %s, daemon at %s\n", goxelpool_version(), socket_path);

    /* json_pack returns a new reference: we own config. */
    json_t *config = json_pack("{s:s, s:i, s:{s:i, s:i}}", "socket_path", socket_path,
                               "timeout_ms", 5000, "pool", "min_connections", 1,
                               "max_connections", 2);
    if (!config) {
        fprintf(stderr, "basic: json_pack failed\n");
        return EXIT_FAILURE;
    }
    goxelpool_client *client = NULL;
    char errbuf[256];
    goxelpool_status st = goxelpool_client_new(config, &client, errbuf, sizeof errbuf);
    json_decref(config); /* borrowed by goxelpool_client_new: ours to free right away */
    if (st != GOXELPOOL_OK) {
        fprintf(stderr, "basic: goxelpool_client_new: %s: %s\n", goxelpool_status_name(st), errbuf);
        return EXIT_FAILURE;
    }

    /* version: no params. */
    if (!(result = call(client, "version", NULL))) goto out;
    printf("daemon version: %s\n", json_string_value(json_object_get(result, "version")));
    json_decref(result); /* new reference from goxelpool_call */

    /* A project of 32x32x32. */
    json_t *params = json_pack("[s,i,i,i]", "basic-example", 32, 32, 32);
    result = call(client, "goxel.create_project", params);
    json_decref(params);
    if (!result) goto out;
    json_decref(result);

    /* A few voxels in a row, red to blue. */
    static const int colors[4][4] = {
        {255, 0, 0, 255}, {0, 255, 0, 255}, {0, 0, 255, 255}, {255, 255, 0, 255}};
    for (int i = 0; i < 4; i++) {
        params = json_pack("{s:i, s:i, s:i, s:[i,i,i,i]}", "x", i, "y", 0, "z", 0, "color",
                           colors[i][0], colors[i][1], colors[i][2], colors[i][3]);
        result = call(client, "goxel.add_voxel", params);
        json_decref(params);
        if (!result) goto out;
        json_decref(result);
    }
    printf("added 4 voxels\n");

    /* Read voxel (2,0,0) back: it must exist and be blue. */
    params = json_pack("[i,i,i]", 2, 0, 0);
    result = call(client, "goxel.get_voxel", params);
    json_decref(params);
    if (!result) goto out;
    /* json_object_get returns a borrowed reference: valid while result lives, never decref'd. */
    json_t *color = json_object_get(result, "color");
    int exists = json_is_true(json_object_get(result, "exists"));
    if (!exists || !color_equals(color, colors[2])) {
        char *text = json_dumps(result, JSON_COMPACT);
        fprintf(stderr, "basic: goxel.get_voxel (2,0,0) returned %s, expected a blue voxel\n",
                text ? text : "?");
        free(text);
        json_decref(result);
        goto out;
    }
    printf("voxel (2,0,0) exists and is blue\n");
    json_decref(result);

    /* Statistics: a new reference. json_dumps returns malloc'd text, freed with free(). */
    json_t *stats = goxelpool_stats(client);
    if (!stats) {
        fprintf(stderr, "basic: goxelpool_stats returned NULL\n");
        goto out;
    }
    char *text = json_dumps(stats, JSON_INDENT(2) | JSON_SORT_KEYS);
    printf("stats:\n%s\n", text ? text : "?");
    free(text);
    json_decref(stats);

    status = EXIT_SUCCESS;
out:
    st = goxelpool_client_close(client, -1);
    if (st != GOXELPOOL_OK) {
        report("goxelpool_client_close", st, NULL);
        status = EXIT_FAILURE;
    }
    goxelpool_client_free(client);
    if (status == EXIT_SUCCESS) printf("basic: ok\n");
    return status;
}
