/* tests/unit/rpc/test_reflection.c: the server reflection core (no transport). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "google/protobuf/descriptor.pb-c.h"
#include "rpc/reflection.h"

typedef Grpc__Reflection__V1__ServerReflectionRequest Request;
typedef Grpc__Reflection__V1__ServerReflectionResponse Response;

static int setup(void **state)
{
    if (rpc__reflection_init() != 0)
        return -1;
    *state = pins_arena_new(0);
    return *state == NULL;
}

static int teardown(void **state)
{
    pins_arena_free(*state);
    rpc__reflection_shutdown();
    return 0;
}

static Response *ask(pins_arena *a,
                     Grpc__Reflection__V1__ServerReflectionRequest__MessageRequestCase what,
                     const char *arg)
{
    Request *req = pins_arena_alloc(a, sizeof(*req));
    assert_non_null(req);
    *req = (Request)GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__INIT;
    req->host = "localhost:50051";
    req->message_request_case = what;
    req->file_containing_symbol = (char *)arg; /* every string member shares the union */
    Response *resp = NULL;
    assert_int_equal(rpc__reflection_answer(a, req, &resp), 0);
    assert_non_null(resp);
    assert_ptr_equal(resp->original_request, req);
    assert_string_equal(resp->valid_host, "localhost:50051");
    return resp;
}

static Response *symbol(pins_arena *a, const char *name)
{
    return ask(
        a, GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_SYMBOL,
        name);
}

/* The file names of a file_descriptor_response, in order, joined by spaces. */
static char *file_names(pins_arena *a, const Response *resp)
{
    assert_int_equal(
        resp->message_response_case,
        GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_FILE_DESCRIPTOR_RESPONSE);
    const Grpc__Reflection__V1__FileDescriptorResponse *fr = resp->file_descriptor_response;
    char *names = pins_arena_strdup(a, "");
    ProtobufCAllocator al = pins_arena_allocator(a);
    for (size_t i = 0; i < fr->n_file_descriptor_proto; i++) {
        Google__Protobuf__FileDescriptorProto *f = google__protobuf__file_descriptor_proto__unpack(
            &al, fr->file_descriptor_proto[i].len, fr->file_descriptor_proto[i].data);
        assert_non_null(f);
        names = pins_arena_printf(a, "%s%s%s", names, i ? " " : "", f->name);
    }
    return names;
}

static void assert_not_found(const Response *resp, const char *text)
{
    assert_int_equal(
        resp->message_response_case,
        GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_ERROR_RESPONSE);
    assert_int_equal(resp->error_response->error_code, 5);
    assert_non_null(strstr(resp->error_response->error_message, text));
}

static void test_reflection_lists_all_five_services(void **state)
{
    pins_arena *a = *state;
    Response *resp =
        ask(a, GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_LIST_SERVICES, "*");
    assert_int_equal(
        resp->message_response_case,
        GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_LIST_SERVICES_RESPONSE);
    const char *want[] = {"memorypins.v1.MemoryPins", "memorypins.v1.Admin",
                          "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
                          "grpc.reflection.v1alpha.ServerReflection"};
    const Grpc__Reflection__V1__ListServiceResponse *ls = resp->list_services_response;
    assert_int_equal(ls->n_service, 5);
    for (size_t i = 0; i < 5; i++) {
        bool found = false;
        for (size_t j = 0; j < ls->n_service; j++)
            found = found || strcmp(ls->service[j]->name, want[i]) == 0;
        if (!found)
            print_error("missing service %s\n", want[i]);
        assert_true(found);
    }
}

static void test_reflection_service_symbol_returns_its_file_and_imports(void **state)
{
    pins_arena *a = *state;
    char *names = file_names(a, symbol(a, "memorypins.v1.MemoryPins"));
    assert_string_equal(names, "memorypins/v1/memory_pins.proto google/protobuf/struct.proto "
                               "google/protobuf/timestamp.proto google/protobuf/wrappers.proto");
}

static void test_reflection_returns_the_original_file_bytes(void **state)
{
    pins_arena *a = *state;
    Response *resp = symbol(a, "grpc.health.v1.Health");
    const Grpc__Reflection__V1__FileDescriptorResponse *fr = resp->file_descriptor_response;
    assert_int_equal(fr->n_file_descriptor_proto, 1);
    ProtobufCAllocator al = pins_arena_allocator(a);
    Google__Protobuf__FileDescriptorProto *f = google__protobuf__file_descriptor_proto__unpack(
        &al, fr->file_descriptor_proto[0].len, fr->file_descriptor_proto[0].data);
    assert_non_null(f);
    size_t n = google__protobuf__file_descriptor_proto__get_packed_size(f);
    uint8_t *again = pins_arena_alloc(a, n);
    google__protobuf__file_descriptor_proto__pack(f, again);
    assert_int_equal(n, fr->file_descriptor_proto[0].len);
    assert_memory_equal(again, fr->file_descriptor_proto[0].data, n);
    assert_string_equal(f->package, "grpc.health.v1");
}

static void test_reflection_finds_methods_messages_enums_and_fields(void **state)
{
    pins_arena *a = *state;
    const char *in_pins[] = {"memorypins.v1.MemoryPins.GetPin",
                             ".memorypins.v1.MemoryPins.WatchPins",
                             "memorypins.v1.Pin",
                             "memorypins.v1.Pin.value",
                             "memorypins.v1.WatchPinsResponse.EventType",
                             "memorypins.v1.WatchPinsResponse.EVENT_TYPE_PUT",
                             "memorypins.v1.GetPinRequest"};
    for (size_t i = 0; i < sizeof(in_pins) / sizeof(in_pins[0]); i++) {
        char *names = file_names(a, symbol(a, in_pins[i]));
        if (strncmp(names, "memorypins/v1/memory_pins.proto ", 32) != 0)
            print_error("%s -> %s\n", in_pins[i], names);
        assert_memory_equal(names, "memorypins/v1/memory_pins.proto ", 32);
    }
    assert_string_equal(file_names(a, symbol(a, "google.protobuf.Struct.FieldsEntry")),
                        "google/protobuf/struct.proto");
    assert_string_equal(file_names(a, symbol(a, "google.protobuf.NULL_VALUE")),
                        "google/protobuf/struct.proto");
    assert_string_equal(file_names(a, symbol(a, "grpc.reflection.v1alpha.ServerReflection."
                                                "ServerReflectionInfo")),
                        "grpc/reflection/v1alpha/reflection.proto");
    assert_string_equal(
        file_names(a, symbol(a, "grpc.reflection.v1.ServerReflectionRequest.message_request")),
        "grpc/reflection/v1/reflection.proto");
    assert_string_equal(file_names(a, symbol(a, "grpc.health.v1")), "grpc/health/v1/health.proto");
}

static void test_reflection_unknown_symbol_is_not_found(void **state)
{
    pins_arena *a = *state;
    assert_not_found(symbol(a, "memorypins.v1.NoSuchThing"), "memorypins.v1.NoSuchThing");
    assert_not_found(symbol(a, ""), "symbol");
    assert_not_found(symbol(a, "memorypins.v1.MemoryPins.GetPinX"), "not found");
    /* A hostile name is echoed only as valid UTF-8 and bounded. */
    char *longname = pins_arena_alloc(a, 5000);
    memset(longname, 'x', 4999);
    longname[4999] = '\0';
    Response *resp = symbol(a, longname);
    assert_not_found(resp, "xxx");
    assert_true(strlen(resp->error_response->error_message) < 300);
    assert_not_found(symbol(a, "bad\xff"), "not valid utf-8");
}

static void test_reflection_file_by_filename_includes_imports(void **state)
{
    pins_arena *a = *state;
    Response *resp =
        ask(a, GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_BY_FILENAME,
            "memorypins/v1/admin.proto");
    char *names = file_names(a, resp);
    assert_memory_equal(names, "memorypins/v1/admin.proto", 25);
    assert_non_null(strstr(names, "google/protobuf/struct.proto"));
    resp = ask(a, GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_BY_FILENAME,
               "nope.proto");
    assert_not_found(resp, "nope.proto");
}

static void test_reflection_answers_extension_queries(void **state)
{
    pins_arena *a = *state;
    Response *resp = ask(
        a,
        GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_ALL_EXTENSION_NUMBERS_OF_TYPE,
        "memorypins.v1.Pin");
    assert_int_equal(
        resp->message_response_case,
        GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_ALL_EXTENSION_NUMBERS_RESPONSE);
    assert_string_equal(resp->all_extension_numbers_response->base_type_name, "memorypins.v1.Pin");
    assert_int_equal(resp->all_extension_numbers_response->n_extension_number, 0);
    resp = ask(
        a,
        GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_ALL_EXTENSION_NUMBERS_OF_TYPE,
        "memorypins.v1.MemoryPins");
    assert_not_found(resp, "memorypins.v1.MemoryPins");

    Grpc__Reflection__V1__ExtensionRequest er = GRPC__REFLECTION__V1__EXTENSION_REQUEST__INIT;
    er.containing_type = "memorypins.v1.Pin";
    er.extension_number = 1000;
    Request req = GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__INIT;
    req.message_request_case =
        GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_EXTENSION;
    req.file_containing_extension = &er;
    assert_int_equal(rpc__reflection_answer(a, &req, &resp), 0);
    assert_not_found(resp, "extension 1000");
}

static void test_reflection_request_without_query_is_invalid(void **state)
{
    pins_arena *a = *state;
    Request req = GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__INIT;
    Response *resp = NULL;
    assert_int_equal(rpc__reflection_answer(a, &req, &resp), 0);
    assert_int_equal(resp->error_response->error_code, 3);
}

/* Packs a v1 request, reads it as v1alpha, answers both ways, and compares the wire bytes. */
static void assert_v1alpha_same(pins_arena *a, const Request *req)
{
    size_t n = grpc__reflection__v1__server_reflection_request__get_packed_size(req);
    uint8_t *buf = pins_arena_alloc(a, n + 1);
    grpc__reflection__v1__server_reflection_request__pack(req, buf);
    ProtobufCAllocator al = pins_arena_allocator(a);
    Grpc__Reflection__V1alpha__ServerReflectionRequest *alpha =
        grpc__reflection__v1alpha__server_reflection_request__unpack(&al, n, buf);
    assert_non_null(alpha);
    Response *r1 = NULL;
    Grpc__Reflection__V1alpha__ServerReflectionResponse *r2 = NULL;
    assert_int_equal(rpc__reflection_answer(a, req, &r1), 0);
    assert_int_equal(rpc__reflection_answer_v1alpha(a, alpha, &r2), 0);
    assert_ptr_equal(r2->base.descriptor,
                     &grpc__reflection__v1alpha__server_reflection_response__descriptor);
    size_t n1 = grpc__reflection__v1__server_reflection_response__get_packed_size(r1);
    size_t n2 = grpc__reflection__v1alpha__server_reflection_response__get_packed_size(r2);
    assert_int_equal(n1, n2);
    uint8_t *b1 = pins_arena_alloc(a, n1 + 1), *b2 = pins_arena_alloc(a, n2 + 1);
    grpc__reflection__v1__server_reflection_response__pack(r1, b1);
    grpc__reflection__v1alpha__server_reflection_response__pack(r2, b2);
    assert_memory_equal(b1, b2, n1);
}

static void test_reflection_v1alpha_answers_the_same(void **state)
{
    pins_arena *a = *state;
    Request req = GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__INIT;
    req.host = "h";
    req.message_request_case =
        GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_LIST_SERVICES;
    req.list_services = "";
    assert_v1alpha_same(a, &req);
    req.message_request_case =
        GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_SYMBOL;
    req.file_containing_symbol = "memorypins.v1.MemoryPins";
    assert_v1alpha_same(a, &req);
    req.file_containing_symbol = "no.such.Symbol";
    assert_v1alpha_same(a, &req);
}

static void test_reflection_init_rejects_a_broken_set(void **state)
{
    (void)state;
    rpc__reflection_shutdown();
    const uint8_t garbage[] = {0x0a, 0x05, 0xff, 0xff};
    assert_int_equal(rpc__reflection_init_from(garbage, sizeof(garbage)), PINS_EINTERNAL);
    /* A file importing one that is not in the set. */
    Google__Protobuf__FileDescriptorProto f = GOOGLE__PROTOBUF__FILE_DESCRIPTOR_PROTO__INIT;
    char *deps[] = {"missing.proto"};
    f.name = "a.proto";
    f.n_dependency = 1;
    f.dependency = deps;
    Google__Protobuf__FileDescriptorProto *files[] = {&f};
    Google__Protobuf__FileDescriptorSet set = GOOGLE__PROTOBUF__FILE_DESCRIPTOR_SET__INIT;
    set.n_file = 1;
    set.file = files;
    uint8_t buf[128];
    size_t n = google__protobuf__file_descriptor_set__pack(&set, buf);
    assert_int_equal(rpc__reflection_init_from(buf, n), PINS_EINTERNAL);
    Response *resp = NULL;
    Request req = GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__INIT;
    pins_arena *a = pins_arena_new(0);
    assert_int_equal(rpc__reflection_answer(a, &req, &resp), PINS_EUNAVAILABLE);
    pins_arena_free(a);
    assert_int_equal(rpc__reflection_init(), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
        T(test_reflection_lists_all_five_services),
        T(test_reflection_service_symbol_returns_its_file_and_imports),
        T(test_reflection_returns_the_original_file_bytes),
        T(test_reflection_finds_methods_messages_enums_and_fields),
        T(test_reflection_unknown_symbol_is_not_found),
        T(test_reflection_file_by_filename_includes_imports),
        T(test_reflection_answers_extension_queries),
        T(test_reflection_request_without_query_is_invalid),
        T(test_reflection_v1alpha_answers_the_same),
        T(test_reflection_init_rejects_a_broken_set),
#undef T
    };
    return cmocka_run_group_tests_name("rpc/reflection", tests, NULL, NULL);
}
