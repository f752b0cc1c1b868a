/* tests/unit/observability/test_log.c: log lines as they reach stderr. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "common/timeutil.h"
#include "fake_clock.h"
#include "observability/log.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* stderr goes into a pipe between capture_begin() and capture_end(). */
static int pipe_fds[2] = {-1, -1};
static int saved_stderr = -1;

static void capture_begin(void)
{
    assert_int_equal(pipe(pipe_fds), 0);
    saved_stderr = dup(STDERR_FILENO);
    assert_true(saved_stderr >= 0);
    assert_true(dup2(pipe_fds[1], STDERR_FILENO) >= 0);
}

/* Everything written since capture_begin(); new string. *preads: read(2) calls until the first
 * newline arrived. */
static char *capture_end(int *preads)
{
    assert_true(dup2(saved_stderr, STDERR_FILENO) >= 0);
    close(saved_stderr);
    close(pipe_fds[1]);
    size_t cap = 1 << 17, len = 0;
    char *out = malloc(cap);
    assert_non_null(out);
    int reads = 0;
    bool newline = false;
    for (;;) {
        ssize_t n = read(pipe_fds[0], out + len, cap - 1 - len);
        if (n <= 0)
            break;
        if (!newline)
            reads++;
        newline = newline || memchr(out + len, '\n', (size_t)n) != NULL;
        len += (size_t)n;
    }
    close(pipe_fds[0]);
    out[len] = '\0';
    if (preads != NULL)
        *preads = reads;
    return out;
}

static int setup(void **state)
{
    (void)state;
    pins_log_setup(PINS_LOG_INFO, PINS_LOG_JSON);
    return 0;
}

/* 2024-05-01T12:00:00.123456Z */
static void assert_rfc3339_utc_micros(const char *s)
{
    static const char shape[] = "dddd-dd-ddTdd:dd:dd.ddddddZ";
    for (size_t i = 0; i < sizeof(shape) - 1; i++) {
        if (shape[i] == 'd')
            assert_true(isdigit((unsigned char)s[i]));
        else
            assert_int_equal(s[i], shape[i]);
    }
}

static json_t *parse_line(const char *line)
{
    size_t len = strlen(line);
    assert_true(len > 0);
    assert_int_equal(line[len - 1], '\n');
    assert_null(memchr(line, '\n', len - 1)); /* exactly one line */
    json_error_t jerr;
    json_t *j = json_loadb(line, len - 1, 0, &jerr);
    if (j == NULL)
        fail_msg("not JSON: %s (%s)", line, jerr.text);
    return j;
}

static void test_json_line_has_ts_level_msg_and_fields_in_order(void **state)
{
    capture_begin();
    pins_log_info("listening", "addr", "127.0.0.1:8000", "proto", "h2", NULL);
    char *out = capture_end(NULL);
    assert_true(strncmp(out, "{\"ts\":\"", 7) == 0);
    assert_rfc3339_utc_micros(out + 7);
    assert_string_equal(out + 7 + 27, "\",\"level\":\"info\",\"msg\":\"listening\","
                                      "\"addr\":\"127.0.0.1:8000\",\"proto\":\"h2\"}\n");
    free(out);
}

static void test_json_escapes_quotes_backslashes_and_control_characters(void **state)
{
    const char *msg = "a\"b\\c\nd\re\tf\x01g\x1fh/\b\f";
    capture_begin();
    pins_log_error(msg, "k\"ey", "v\\al\n", NULL);
    char *out = capture_end(NULL);
    assert_non_null(strstr(out, "\"msg\":\"a\\\"b\\\\c\\nd\\re\\tf\\u0001g\\u001fh/\\b\\f\""));
    json_t *j = parse_line(out);
    assert_string_equal(json_string_value(json_object_get(j, "msg")), msg);
    assert_string_equal(json_string_value(json_object_get(j, "k\"ey")), "v\\al\n");
    assert_string_equal(json_string_value(json_object_get(j, "level")), "error");
    json_decref(j);
    free(out);
}

static void test_json_keeps_utf8_and_replaces_invalid_bytes(void **state)
{
    capture_begin();
    pins_log_warn("caf\xc3\xa9 \xe2\x9c\x93 bad:\xff\xc3 end", NULL);
    char *out = capture_end(NULL);
    json_t *j = parse_line(out);
    assert_string_equal(json_string_value(json_object_get(j, "msg")),
                        "caf\xc3\xa9 \xe2\x9c\x93 bad:\xef\xbf\xbd\xef\xbf\xbd end");
    json_decref(j);
    free(out);
}

static void test_json_null_value_is_written_as_null(void **state)
{
    capture_begin();
    pins_log_info("x", "tenant", NULL, NULL);
    char *out = capture_end(NULL);
    json_t *j = parse_line(out);
    assert_true(json_is_null(json_object_get(j, "tenant")));
    json_decref(j);
    free(out);
}

static void test_text_format_quotes_values_that_need_it(void **state)
{
    pins_log_setup(PINS_LOG_DEBUG, PINS_LOG_TEXT);
    capture_begin();
    pins_log_debug("store opened", "path", "./var", "note", "two words", "q", "a\"b", "e", "", "nl",
                   "x\ny", NULL);
    char *out = capture_end(NULL);
    assert_rfc3339_utc_micros(out);
    assert_string_equal(out + 27, " debug store opened path=./var note=\"two words\" q=\"a\\\"b\" "
                                  "e=\"\" nl=\"x\\ny\"\n");
    free(out);
}

static void test_level_filter_drops_lower_levels(void **state)
{
    pins_log_setup(PINS_LOG_WARN, PINS_LOG_JSON);
    assert_false(pins_log_enabled(PINS_LOG_DEBUG));
    assert_false(pins_log_enabled(PINS_LOG_INFO));
    assert_true(pins_log_enabled(PINS_LOG_WARN));
    assert_true(pins_log_enabled(PINS_LOG_ERROR));
    capture_begin();
    pins_log_info("hidden", NULL);
    pins_log_debug("hidden", NULL);
    pins_log_warn("shown", NULL);
    char *out = capture_end(NULL);
    assert_null(strstr(out, "hidden"));
    assert_non_null(strstr(out, "\"level\":\"warn\",\"msg\":\"shown\""));
    free(out);
}

/* A new string of n 'x'. */
static char *xs(size_t n)
{
    char *s = malloc(n + 1);
    assert_non_null(s);
    memset(s, 'x', n);
    s[n] = '\0';
    return s;
}

static void test_long_line_is_written_whole_in_one_write(void **state)
{
    size_t n = 20000;
    char *big = xs(n);
    capture_begin();
    pins_log_info("big", "value", big, NULL);
    int reads = 0;
    char *out = capture_end(&reads);
    assert_int_equal(reads, 1);
    json_t *j = parse_line(out);
    assert_int_equal(strlen(json_string_value(json_object_get(j, "value"))), n);
    json_decref(j);
    free(out);
    free(big);
}

/* Past the line's maximum (4 MiB) the event is replaced by one short line saying so. */
static void test_line_over_the_maximum_is_replaced_by_a_short_one(void **state)
{
    char *big = xs(5u << 20);
    capture_begin();
    pins_log_info("big", "value", big, NULL);
    char *out = capture_end(NULL);
    json_t *j = parse_line(out);
    assert_string_equal(json_string_value(json_object_get(j, "level")), "error");
    assert_string_equal(json_string_value(json_object_get(j, "msg")),
                        "log line dropped: longer than 4 MiB");
    assert_rfc3339_utc_micros(json_string_value(json_object_get(j, "ts")));
    json_decref(j);
    free(out);

    pins_log_setup(PINS_LOG_INFO, PINS_LOG_TEXT);
    capture_begin();
    pins_log_info("big", "value", big, NULL);
    out = capture_end(NULL);
    assert_rfc3339_utc_micros(out);
    assert_string_equal(out + 27, " error log line dropped: longer than 4 MiB\n");
    free(out);
    free(big);
}

/* The timestamp comes from the process's clock (common/timeutil.h), which a test can move. */
static void test_timestamp_is_the_process_clock(void **state)
{
    fake_clock_install();
    fake_clock_advance_ms(1234);
    char want[PINS_TIME_RFC3339_LEN];
    pins_time_format_us(pins_time_now_us(), want);
    capture_begin();
    pins_log_info("tick", NULL);
    char *out = capture_end(NULL);
    json_t *j = parse_line(out);
    assert_string_equal(json_string_value(json_object_get(j, "ts")), want);
    json_decref(j);
    free(out);

    pins_log_setup(PINS_LOG_INFO, PINS_LOG_TEXT);
    capture_begin();
    pins_log_info("tick", NULL);
    out = capture_end(NULL);
    assert_memory_equal(out, want, strlen(want));
    assert_string_equal(out + strlen(want), " info tick\n");
    free(out);
    fake_clock_uninstall();
}

static void test_log_preserves_errno(void **state)
{
    capture_begin();
    errno = ENOENT;
    pins_log_info("x", NULL);
    int e = errno;
    free(capture_end(NULL));
    assert_int_equal(e, ENOENT);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_json_line_has_ts_level_msg_and_fields_in_order, setup),
        cmocka_unit_test_setup(test_json_escapes_quotes_backslashes_and_control_characters, setup),
        cmocka_unit_test_setup(test_json_keeps_utf8_and_replaces_invalid_bytes, setup),
        cmocka_unit_test_setup(test_json_null_value_is_written_as_null, setup),
        cmocka_unit_test_setup(test_text_format_quotes_values_that_need_it, setup),
        cmocka_unit_test_setup(test_level_filter_drops_lower_levels, setup),
        cmocka_unit_test_setup(test_long_line_is_written_whole_in_one_write, setup),
        cmocka_unit_test_setup(test_line_over_the_maximum_is_replaced_by_a_short_one, setup),
        cmocka_unit_test_setup(test_timestamp_is_the_process_clock, setup),
        cmocka_unit_test_setup(test_log_preserves_errno, setup),
    };
    return cmocka_run_group_tests_name("observability/log", tests, NULL, NULL);
}
