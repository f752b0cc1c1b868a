/* pins_example.c: libpins-client's blocking API from start to end.
 *
 * Stores a pin, reads it back, lists the tenant, prints the pin as JSON and deletes it.
 *
 *   cc pins_example.c $(pkg-config --cflags --libs pins-client) -o pins_example
 *   PINS_ADDR=127.0.0.1:50051 ./pins_example [--keep] [TENANT KEY JSON]
 *
 * PINS_ADDR: host:port (h2c), http://host:port or https://host:port (TLS, verified against the
 * system's CA store, or PINS_CA_FILE); default 127.0.0.1:50051. MACHINE_SECRET_TOKEN and
 * PINS_TOKEN, when set, are sent as the machine token and the bearer token. --keep leaves the pin
 * in place. Exit status: 0 done, 1 a call failed, 2 usage.
 */
#include <pins/client.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Prints what failed and the whole status: code, message, who decided it, the request id. */
static int fail(const char *what, const pins_status *st)
{
    fprintf(stderr, "pins_example: %s failed: %s (%d): %s [%s, %d attempt(s), request id %s]\n",
            what, pins_code_name(st->code), st->code, st->message ? st->message : "",
            st->from_server ? "from the server" : "from the client", st->attempts,
            st->request_id ? st->request_id : "none");
    return 1;
}

/* Prints s as a JSON string. */
static void put_json_string(const char *s)
{
    putchar('"');
    for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++) {
        if (*p == '"' || *p == '\\')
            printf("\\%c", *p);
        else if (*p < 0x20)
            printf("\\u%04x", *p);
        else
            putchar(*p);
    }
    putchar('"');
}

/* Prints a pin as one line of JSON; its value through pins_value_to_json. */
static int print_pin(const Memorypins__V1__Pin *pin)
{
    char *value = pins_value_to_json(pin->value);
    if (value == NULL) {
        fprintf(stderr, "pins_example: the pin's value has no JSON form\n");
        return 1;
    }
    printf("pin: {\"tenant_id\":");
    put_json_string(pin->tenant_id);
    printf(",\"key\":");
    put_json_string(pin->key);
    printf(",\"version\":%lld,\"value\":%s}\n", (long long)pin->version, value);
    free(value);
    return 0;
}

int main(int argc, char **argv)
{
    bool keep = argc > 1 && strcmp(argv[1], "--keep") == 0;
    if (keep) {
        argc--;
        argv++;
    }
    if (argc != 1 && argc != 4) {
        fprintf(stderr, "usage: pins_example [--keep] [TENANT KEY JSON]\n");
        return 2;
    }
    char *tenant = argc == 4 ? argv[1] : "example";
    char *key = argc == 4 ? argv[2] : "greeting";
    const char *json = argc == 4 ? argv[3] : "{\"text\":\"hello\",\"n\":1}";

    int rc = 1;
    pins_status st = PINS_STATUS_INIT;
    pins_client *client = NULL;
    Google__Protobuf__Struct *value = NULL;
    Memorypins__V1__UpsertPinResponse *put = NULL;
    Memorypins__V1__GetPinResponse *got = NULL;
    Memorypins__V1__ListPinsResponse *list = NULL;
    Memorypins__V1__DeletePinResponse *del = NULL;

    /* Connection options: strings are copied by pins_client_new. */
    pins_options opts;
    pins_options_init(&opts);
    if (getenv("PINS_ADDR") != NULL)
        opts.addr = getenv("PINS_ADDR");
    opts.ca_file = getenv("PINS_CA_FILE");
    opts.machine_token = getenv("MACHINE_SECRET_TOKEN");
    opts.bearer_token = getenv("PINS_TOKEN");
    opts.timeout_ms = 5000; /* every call's deadline, sent as grpc-timeout */

    client = pins_client_new(&opts, &st);
    if (client == NULL) {
        fail("pins_client_new", &st);
        goto out;
    }

    /* The value: a JSON object, as a google.protobuf.Struct (new; ours to free). */
    if (pins_value_from_json(json, strlen(json), &value, &st) != 0) {
        fail("pins_value_from_json", &st);
        rc = 2;
        goto out;
    }

    /* UpsertPin: the request is borrowed, built on the stack; the response is new. */
    Memorypins__V1__UpsertPinRequest put_req = MEMORYPINS__V1__UPSERT_PIN_REQUEST__INIT;
    put_req.tenant_id = tenant;
    put_req.key = key;
    put_req.value = value;
    if (pins_upsert_pin(client, &put_req, &put, NULL, &st) != 0) {
        fail("UpsertPin", &st);
        goto out;
    }
    if (put->pin == NULL) {
        fprintf(stderr, "pins_example: UpsertPin answered without the pin\n");
        goto out;
    }
    printf("upsert: %s/%s version %lld %s\n", tenant, key, (long long)put->pin->version,
           put->created ? "created" : "replaced");

    /* GetPin. A read is retried with backoff on UNAVAILABLE; a write is not. */
    Memorypins__V1__GetPinRequest get_req = MEMORYPINS__V1__GET_PIN_REQUEST__INIT;
    get_req.tenant_id = tenant;
    get_req.key = key;
    if (pins_get_pin(client, &get_req, &got, NULL, &st) != 0) {
        fail("GetPin", &st);
        goto out;
    }
    if (got->pin == NULL) {
        fprintf(stderr, "pins_example: GetPin answered without the pin\n");
        goto out;
    }
    printf("get: %s/%s version %lld\n", got->pin->tenant_id, got->pin->key,
           (long long)got->pin->version);

    /* ListPins: the tenant's pins, newest first, one page of up to 100. */
    Memorypins__V1__ListPinsRequest list_req = MEMORYPINS__V1__LIST_PINS_REQUEST__INIT;
    list_req.tenant_id = tenant;
    list_req.limit = 100;
    if (pins_list_pins(client, &list_req, &list, NULL, &st) != 0) {
        fail("ListPins", &st);
        goto out;
    }
    printf("list: %s has %lld pin(s):", tenant, (long long)list->total);
    for (size_t i = 0; i < list->n_pins; i++)
        printf(" %s", list->pins[i]->key);
    printf("\n");

    if (print_pin(got->pin) != 0)
        goto out;

    /* DeletePin, unless asked to keep the pin. */
    if (!keep) {
        Memorypins__V1__DeletePinRequest del_req = MEMORYPINS__V1__DELETE_PIN_REQUEST__INIT;
        del_req.tenant_id = tenant;
        del_req.key = key;
        if (pins_delete_pin(client, &del_req, &del, NULL, &st) != 0) {
            fail("DeletePin", &st);
            goto out;
        }
        printf("delete: %s/%s %s\n", tenant, key, del->deleted ? "deleted" : "was not there");
    }
    rc = 0;
out:
    pins_message_free(del ? &del->base : NULL);
    pins_message_free(list ? &list->base : NULL);
    pins_message_free(got ? &got->base : NULL);
    pins_message_free(put ? &put->base : NULL);
    pins_message_free(value ? &value->base : NULL);
    pins_client_free(client);
    pins_status_clear(&st);
    return rc;
}
