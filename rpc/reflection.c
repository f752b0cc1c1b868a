/* rpc/reflection.c: the transport-free core of server reflection.
 *
 * The FileDescriptorSet is walked on the wire (field 1, length-delimited) rather than unpacked as a
 * whole, so that each file's original serialized bytes can be answered as they are, without
 * re-packing. Each file is also unpacked once (into the index arena) to collect its symbols. The
 * symbol table is a sorted array searched with bsearch: a few hundred names, built once.
 */
#include "rpc/reflection.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "google/protobuf/descriptor.pb-c.h"

extern const unsigned char pins_descriptor_set[];
extern const size_t pins_descriptor_set_len;

#define NAME_ECHO_MAX         200 /* bytes of a requested name echoed in an error message */
#define GRPC_NOT_FOUND        5
#define GRPC_INVALID_ARGUMENT 3

struct file {
    const char *name;
    ProtobufCBinaryData bytes; /* borrowed from the set */
    Google__Protobuf__FileDescriptorProto *proto;
    size_t *deps;
    size_t n_deps;
};

struct symbol {
    const char *name;
    size_t file;
    size_t seq; /* discovery order: the first definition of a name wins */
    bool message;
};

struct extension {
    const char *extendee; /* fully qualified, no leading dot */
    int32_t number;
    size_t file;
};

struct index {
    pins_arena *a;
    struct file *files;
    size_t n_files;
    struct symbol *syms;
    size_t n_syms, cap_syms;
    struct extension *exts;
    size_t n_exts, cap_exts;
    Grpc__Reflection__V1__ServiceResponse **services;
    size_t n_services;
};

static struct index *idx;

/* ---- building the index ---------------------------------------------------------------------- */

static const char *join(pins_arena *a, const char *scope, const char *name)
{
    if (scope[0] == '\0')
        return pins_arena_strdup(a, name);
    return pins_arena_printf(a, "%s.%s", scope, name);
}

/* Room for element n of arr (elements of elem bytes, *pcap of them allocated): arr itself when
 * n < *pcap, else arr reallocated to twice *pcap (first when *pcap is 0) and *pcap updated.
 * Returns NULL when out of memory, with arr and *pcap untouched. */
static void *grow(void *arr, size_t *pcap, size_t n, size_t elem, size_t first)
{
    if (n < *pcap)
        return arr;
    size_t cap = *pcap != 0 ? *pcap * 2 : first;
    void *grown = realloc(arr, cap * elem);
    if (grown != NULL)
        *pcap = cap;
    return grown;
}

static int add_symbol(struct index *x, const char *name, size_t file, bool message)
{
    if (name == NULL)
        return PINS_ENOMEM;
    struct symbol *syms = grow(x->syms, &x->cap_syms, x->n_syms, sizeof(*syms), 256);
    if (syms == NULL)
        return PINS_ENOMEM;
    x->syms = syms;
    x->syms[x->n_syms] = (struct symbol){name, file, x->n_syms, message};
    x->n_syms++;
    return 0;
}

static int add_fields(struct index *x, const char *scope, size_t file,
                      Google__Protobuf__FieldDescriptorProto **fields, size_t n, bool extensions)
{
    for (size_t i = 0; i < n; i++) {
        int rv = add_symbol(x, join(x->a, scope, fields[i]->name), file, false);
        if (rv != 0)
            return rv;
        if (!extensions || fields[i]->extendee == NULL)
            continue;
        struct extension *exts = grow(x->exts, &x->cap_exts, x->n_exts, sizeof(*exts), 16);
        if (exts == NULL)
            return PINS_ENOMEM;
        x->exts = exts;
        const char *extendee = fields[i]->extendee;
        if (extendee[0] == '.')
            extendee++;
        x->exts[x->n_exts++] = (struct extension){extendee, fields[i]->number, file};
    }
    return 0;
}

static int add_enum(struct index *x, const char *scope, size_t file,
                    const Google__Protobuf__EnumDescriptorProto *e)
{
    int rv = add_symbol(x, join(x->a, scope, e->name), file, false);
    /* Enum values are siblings of their enum, as in C++ scoping rules. */
    for (size_t i = 0; rv == 0 && i < e->n_value; i++)
        rv = add_symbol(x, join(x->a, scope, e->value[i]->name), file, false);
    return rv;
}

static int add_message(struct index *x, const char *scope, size_t file,
                       const Google__Protobuf__DescriptorProto *m)
{
    const char *name = join(x->a, scope, m->name);
    int rv = add_symbol(x, name, file, true);
    if (rv == 0)
        rv = add_fields(x, name, file, m->field, m->n_field, false);
    if (rv == 0)
        rv = add_fields(x, name, file, m->extension, m->n_extension, true);
    for (size_t i = 0; rv == 0 && i < m->n_oneof_decl; i++)
        rv = add_symbol(x, join(x->a, name, m->oneof_decl[i]->name), file, false);
    for (size_t i = 0; rv == 0 && i < m->n_enum_type; i++)
        rv = add_enum(x, name, file, m->enum_type[i]);
    for (size_t i = 0; rv == 0 && i < m->n_nested_type; i++)
        rv = add_message(x, name, file, m->nested_type[i]);
    return rv;
}

static int add_file(struct index *x, size_t file)
{
    const Google__Protobuf__FileDescriptorProto *f = x->files[file].proto;
    const char *pkg = f->package != NULL ? f->package : "";
    int rv = 0;
    /* The package and each of its parents ("grpc.reflection.v1", "grpc.reflection", "grpc"). */
    for (size_t n = strlen(pkg); rv == 0 && n > 0;) {
        rv = add_symbol(x, pins_arena_strndup(x->a, pkg, n), file, false);
        while (n > 0 && pkg[n - 1] != '.')
            n--;
        if (n > 0)
            n--;
    }
    for (size_t i = 0; rv == 0 && i < f->n_message_type; i++)
        rv = add_message(x, pkg, file, f->message_type[i]);
    for (size_t i = 0; rv == 0 && i < f->n_enum_type; i++)
        rv = add_enum(x, pkg, file, f->enum_type[i]);
    if (rv == 0)
        rv = add_fields(x, pkg, file, f->extension, f->n_extension, true);
    for (size_t i = 0; rv == 0 && i < f->n_service; i++) {
        const Google__Protobuf__ServiceDescriptorProto *s = f->service[i];
        const char *name = join(x->a, pkg, s->name);
        rv = add_symbol(x, name, file, false);
        for (size_t j = 0; rv == 0 && j < s->n_method; j++)
            rv = add_symbol(x, join(x->a, name, s->method[j]->name), file, false);
    }
    return rv;
}

static int cmp_symbol(const void *pa, const void *pb)
{
    const struct symbol *a = pa, *b = pb;
    int c = strcmp(a->name, b->name);
    if (c != 0)
        return c;
    return a->seq < b->seq ? -1 : a->seq > b->seq;
}

static int cmp_symbol_key(const void *key, const void *elem)
{
    return strcmp(key, ((const struct symbol *)elem)->name);
}

static size_t find_file(const struct index *x, const char *name)
{
    for (size_t i = 0; i < x->n_files; i++) {
        if (strcmp(x->files[i].name, name) == 0)
            return i;
    }
    return SIZE_MAX;
}

/* Reads a varint from [*pp, end); false when cut short or longer than 10 bytes. */
static bool read_varint(const uint8_t **pp, const uint8_t *end, uint64_t *pv)
{
    uint64_t v = 0;
    const uint8_t *p = *pp;
    for (int i = 0; i < 10 && p < end; i++) {
        v |= (uint64_t)(*p & 0x7F) << (7 * i);
        if ((*p++ & 0x80) == 0) {
            *pp = p;
            *pv = v;
            return true;
        }
    }
    return false;
}

/* Splits the set into its files (field 1 of FileDescriptorSet) and unpacks each. */
static int load_files(struct index *x, const uint8_t *set, size_t len)
{
    const uint8_t *p = set, *end = set + len;
    size_t n = 0, cap = 0;
    ProtobufCAllocator al = pins_arena_allocator(x->a);
    while (p < end) {
        uint64_t tag, flen;
        if (!read_varint(&p, end, &tag) || tag != (1 << 3 | 2) || !read_varint(&p, end, &flen) ||
            flen > (uint64_t)(end - p))
            return PINS_EINTERNAL;
        if (n == cap) {
            cap = cap != 0 ? cap * 2 : 16;
            struct file *nf = pins_arena_alloc(x->a, cap * sizeof(*nf));
            if (nf == NULL)
                return PINS_ENOMEM;
            if (n > 0)
                memcpy(nf, x->files, n * sizeof(*nf));
            x->files = nf;
        }
        struct file *f = &x->files[n];
        *f = (struct file){.bytes = {(size_t)flen, (uint8_t *)p}};
        f->proto = google__protobuf__file_descriptor_proto__unpack(&al, (size_t)flen, p);
        if (f->proto == NULL || f->proto->name == NULL)
            return PINS_EINTERNAL;
        f->name = f->proto->name;
        x->n_files = n;
        if (find_file(x, f->name) != SIZE_MAX)
            return PINS_EINTERNAL;
        x->n_files = ++n;
        p += flen;
    }
    return 0;
}

static int link_deps(struct index *x)
{
    for (size_t i = 0; i < x->n_files; i++) {
        struct file *f = &x->files[i];
        f->n_deps = f->proto->n_dependency;
        f->deps = pins_arena_calloc(x->a, f->n_deps + 1, sizeof(*f->deps));
        if (f->deps == NULL)
            return PINS_ENOMEM;
        for (size_t j = 0; j < f->n_deps; j++) {
            f->deps[j] = find_file(x, f->proto->dependency[j]);
            if (f->deps[j] == SIZE_MAX)
                return PINS_EINTERNAL;
        }
    }
    return 0;
}

static int list_services(struct index *x)
{
    size_t n = 0;
    for (size_t i = 0; i < x->n_files; i++)
        n += x->files[i].proto->n_service;
    x->services = pins_arena_calloc(x->a, n + 1, sizeof(*x->services));
    if (x->services == NULL)
        return PINS_ENOMEM;
    for (size_t i = 0; i < x->n_files; i++) {
        const Google__Protobuf__FileDescriptorProto *f = x->files[i].proto;
        for (size_t j = 0; j < f->n_service; j++) {
            Grpc__Reflection__V1__ServiceResponse *s = pins_arena_alloc(x->a, sizeof(*s));
            if (s == NULL)
                return PINS_ENOMEM;
            *s =
                (Grpc__Reflection__V1__ServiceResponse)GRPC__REFLECTION__V1__SERVICE_RESPONSE__INIT;
            s->name = (char *)join(x->a, f->package != NULL ? f->package : "", f->service[j]->name);
            if (s->name == NULL)
                return PINS_ENOMEM;
            x->services[x->n_services++] = s;
        }
    }
    return 0;
}

static void index_free(struct index *x)
{
    if (x == NULL)
        return;
    free(x->syms);
    free(x->exts);
    pins_arena_free(x->a);
    free(x);
}

/* ---- answering ------------------------------------------------------------------------------- */

static const struct symbol *find_symbol(const struct index *x, const char *name)
{
    if (name[0] == '.')
        name++;
    return bsearch(name, x->syms, x->n_syms, sizeof(*x->syms), cmp_symbol_key);
}

/* Appends file and, depth first, its imports not yet in the list. */
static void collect(const struct index *x, size_t file, bool *seen, ProtobufCBinaryData *out,
                    size_t *pn)
{
    if (seen[file])
        return;
    seen[file] = true;
    out[(*pn)++] = x->files[file].bytes;
    for (size_t i = 0; i < x->files[file].n_deps; i++)
        collect(x, x->files[file].deps[i], seen, out, pn);
}

static int answer_files(pins_arena *a, const struct index *x, size_t file,
                        Grpc__Reflection__V1__ServerReflectionResponse *resp)
{
    Grpc__Reflection__V1__FileDescriptorResponse *fr = pins_arena_alloc(a, sizeof(*fr));
    bool *seen = pins_arena_calloc(a, x->n_files, sizeof(*seen));
    ProtobufCBinaryData *out = pins_arena_calloc(a, x->n_files, sizeof(*out));
    if (fr == NULL || seen == NULL || out == NULL)
        return PINS_ENOMEM;
    *fr = (Grpc__Reflection__V1__FileDescriptorResponse)
        GRPC__REFLECTION__V1__FILE_DESCRIPTOR_RESPONSE__INIT;
    collect(x, file, seen, out, &fr->n_file_descriptor_proto);
    fr->file_descriptor_proto = out;
    resp->message_response_case =
        GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_FILE_DESCRIPTOR_RESPONSE;
    resp->file_descriptor_response = fr;
    return 0;
}

/* Length of the valid UTF-8 character at p (NUL-terminated), or 0 (Unicode table 3-7). */
static size_t utf8_char(const unsigned char *p)
{
    unsigned c = p[0];
    if (c < 0x80)
        return 1;
    if (c < 0xC2 || c > 0xF4)
        return 0;
    if (c < 0xE0)
        return (p[1] & 0xC0) == 0x80 ? 2 : 0;
    unsigned lo = c == 0xE0 ? 0xA0 : c == 0xF0 ? 0x90 : 0x80;
    unsigned hi = c == 0xED ? 0x9F : c == 0xF4 ? 0x8F : 0xBF;
    if (p[1] < lo || p[1] > hi || (p[2] & 0xC0) != 0x80)
        return 0;
    if (c < 0xF0)
        return 3;
    return (p[3] & 0xC0) == 0x80 ? 4 : 0;
}

/* The requested name for an error message: valid UTF-8 (the message is a proto3 string), at most
 * NAME_ECHO_MAX bytes, cut at a character boundary. */
static const char *echo_name(pins_arena *a, const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t n = 0;
    while (p[n] != '\0') {
        size_t k = utf8_char(p + n);
        if (k == 0)
            return "(a name that is not valid utf-8)";
        if (n + k > NAME_ECHO_MAX)
            break;
        n += k;
    }
    const char *e = pins_arena_strndup(a, s, n);
    return e != NULL ? e : "";
}

static int answer_error(pins_arena *a, int code, const char *msg,
                        Grpc__Reflection__V1__ServerReflectionResponse *resp)
{
    Grpc__Reflection__V1__ErrorResponse *er = pins_arena_alloc(a, sizeof(*er));
    if (er == NULL || msg == NULL)
        return PINS_ENOMEM;
    *er = (Grpc__Reflection__V1__ErrorResponse)GRPC__REFLECTION__V1__ERROR_RESPONSE__INIT;
    er->error_code = code;
    er->error_message = (char *)msg;
    resp->message_response_case =
        GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_ERROR_RESPONSE;
    resp->error_response = er;
    return 0;
}

static int answer_extension(pins_arena *a, const struct index *x,
                            const Grpc__Reflection__V1__ExtensionRequest *er,
                            Grpc__Reflection__V1__ServerReflectionResponse *resp)
{
    const char *type = er != NULL && er->containing_type != NULL ? er->containing_type : "";
    int32_t number = er != NULL ? er->extension_number : 0;
    if (type[0] == '.')
        type++;
    for (size_t i = 0; i < x->n_exts; i++) {
        if (x->exts[i].number == number && strcmp(x->exts[i].extendee, type) == 0)
            return answer_files(a, x, x->exts[i].file, resp);
    }
    return answer_error(a, GRPC_NOT_FOUND,
                        pins_arena_printf(a, "extension %d of type \"%s\" not found", (int)number,
                                          echo_name(a, type)),
                        resp);
}

static int answer_extension_numbers(pins_arena *a, const struct index *x, const char *type,
                                    Grpc__Reflection__V1__ServerReflectionResponse *resp)
{
    const struct symbol *sym = find_symbol(x, type);
    if (sym == NULL || !sym->message)
        return answer_error(
            a, GRPC_NOT_FOUND,
            pins_arena_printf(a, "message type \"%s\" not found", echo_name(a, type)), resp);
    Grpc__Reflection__V1__ExtensionNumberResponse *nr = pins_arena_alloc(a, sizeof(*nr));
    int32_t *nums = pins_arena_calloc(a, x->n_exts + 1, sizeof(*nums));
    if (nr == NULL || nums == NULL)
        return PINS_ENOMEM;
    *nr = (Grpc__Reflection__V1__ExtensionNumberResponse)
        GRPC__REFLECTION__V1__EXTENSION_NUMBER_RESPONSE__INIT;
    nr->base_type_name = (char *)sym->name;
    for (size_t i = 0; i < x->n_exts; i++) {
        if (strcmp(x->exts[i].extendee, sym->name) == 0)
            nums[nr->n_extension_number++] = x->exts[i].number;
    }
    nr->extension_number = nums;
    resp->message_response_case =
        GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_ALL_EXTENSION_NUMBERS_RESPONSE;
    resp->all_extension_numbers_response = nr;
    return 0;
}

/* Re-reads msg as a message of type to (same field numbers), in a. */
static ProtobufCMessage *convert(pins_arena *a, const ProtobufCMessage *msg,
                                 const ProtobufCMessageDescriptor *to, int *perr)
{
    size_t n = protobuf_c_message_get_packed_size(msg);
    uint8_t *buf = pins_arena_alloc(a, n + 1);
    if (buf == NULL) {
        *perr = PINS_ENOMEM;
        return NULL;
    }
    protobuf_c_message_pack(msg, buf);
    ProtobufCAllocator al = pins_arena_allocator(a);
    ProtobufCMessage *out = protobuf_c_message_unpack(to, &al, n, buf);
    if (out == NULL)
        *perr = PINS_ENOMEM;
    return out;
}

/* ---- public ---------------------------------------------------------------------------------- */

int rpc__reflection_init_from(const uint8_t *set, size_t len)
{
    if (idx != NULL)
        return 0;
    int rv = PINS_ENOMEM;
    struct index *x = calloc(1, sizeof(*x));
    if (x == NULL)
        goto out;
    x->a = pins_arena_new(0);
    if (x->a == NULL)
        goto out;
    rv = load_files(x, set, len);
    if (rv == 0)
        rv = link_deps(x);
    if (rv == 0)
        rv = list_services(x);
    for (size_t i = 0; rv == 0 && i < x->n_files; i++)
        rv = add_file(x, i);
    if (rv != 0)
        goto out;
    qsort(x->syms, x->n_syms, sizeof(*x->syms), cmp_symbol);
    /* Keep the first definition of each name. */
    size_t n = 0;
    for (size_t i = 0; i < x->n_syms; i++) {
        if (n == 0 || strcmp(x->syms[n - 1].name, x->syms[i].name) != 0)
            x->syms[n++] = x->syms[i];
    }
    x->n_syms = n;
    idx = x;
    x = NULL;
out:
    index_free(x);
    return rv;
}

int rpc__reflection_init(void)
{
    return rpc__reflection_init_from(pins_descriptor_set, pins_descriptor_set_len);
}

void rpc__reflection_shutdown(void)
{
    index_free(idx);
    idx = NULL;
}

int rpc__reflection_answer(pins_arena *a, const Grpc__Reflection__V1__ServerReflectionRequest *req,
                           Grpc__Reflection__V1__ServerReflectionResponse **presp)
{
    const struct index *x = idx;
    if (x == NULL)
        return PINS_EUNAVAILABLE;
    Grpc__Reflection__V1__ServerReflectionResponse *resp = pins_arena_alloc(a, sizeof(*resp));
    if (resp == NULL)
        return PINS_ENOMEM;
    *resp = (Grpc__Reflection__V1__ServerReflectionResponse)
        GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__INIT;
    resp->valid_host = req->host;
    resp->original_request = (Grpc__Reflection__V1__ServerReflectionRequest *)req;
    int rv;
    const struct symbol *sym;
    size_t file;
    switch (req->message_request_case) {
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_LIST_SERVICES: {
        Grpc__Reflection__V1__ListServiceResponse *ls = pins_arena_alloc(a, sizeof(*ls));
        if (ls == NULL)
            return PINS_ENOMEM;
        *ls = (Grpc__Reflection__V1__ListServiceResponse)
            GRPC__REFLECTION__V1__LIST_SERVICE_RESPONSE__INIT;
        ls->n_service = x->n_services;
        ls->service = x->services;
        resp->message_response_case =
            GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_LIST_SERVICES_RESPONSE;
        resp->list_services_response = ls;
        rv = 0;
        break;
    }
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_BY_FILENAME:
        file = find_file(x, req->file_by_filename);
        if (file != SIZE_MAX)
            rv = answer_files(a, x, file, resp);
        else
            rv = answer_error(
                a, GRPC_NOT_FOUND,
                pins_arena_printf(a, "file \"%s\" not found", echo_name(a, req->file_by_filename)),
                resp);
        break;
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_SYMBOL:
        sym = find_symbol(x, req->file_containing_symbol);
        if (sym != NULL)
            rv = answer_files(a, x, sym->file, resp);
        else
            rv = answer_error(a, GRPC_NOT_FOUND,
                              pins_arena_printf(a, "symbol \"%s\" not found",
                                                echo_name(a, req->file_containing_symbol)),
                              resp);
        break;
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_EXTENSION:
        rv = answer_extension(a, x, req->file_containing_extension, resp);
        break;
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_ALL_EXTENSION_NUMBERS_OF_TYPE:
        rv = answer_extension_numbers(a, x, req->all_extension_numbers_of_type, resp);
        break;
    default:
        rv = answer_error(a, GRPC_INVALID_ARGUMENT, "reflection request names no query", resp);
        break;
    }
    if (rv != 0)
        return rv;
    *presp = resp;
    return 0;
}

int rpc__reflection_answer_v1alpha(pins_arena *a,
                                   const Grpc__Reflection__V1alpha__ServerReflectionRequest *req,
                                   Grpc__Reflection__V1alpha__ServerReflectionResponse **presp)
{
    int rv = 0;
    Grpc__Reflection__V1__ServerReflectionRequest *req1 =
        (Grpc__Reflection__V1__ServerReflectionRequest *)convert(
            a, &req->base, &grpc__reflection__v1__server_reflection_request__descriptor, &rv);
    if (req1 == NULL)
        return rv;
    Grpc__Reflection__V1__ServerReflectionResponse *resp1;
    rv = rpc__reflection_answer(a, req1, &resp1);
    if (rv != 0)
        return rv;
    ProtobufCMessage *resp = convert(
        a, &resp1->base, &grpc__reflection__v1alpha__server_reflection_response__descriptor, &rv);
    if (resp == NULL)
        return rv;
    *presp = (Grpc__Reflection__V1alpha__ServerReflectionResponse *)resp;
    return 0;
}
