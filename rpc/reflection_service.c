/* rpc/reflection_service.c: the ServerReflectionInfo handlers, glue between rpc/call.h and the
 * core in rpc/reflection.c. Kept apart from the core so that the core's tests link without the
 * transport.
 *
 * The stream: the first request comes with the call, the rest through on_message; every request
 * gets one response built in its own arena (freed once rpc_call_send has packed it), so a long
 * stream costs no call-arena growth. The state lives in the call's arena; done guards against
 * finishing twice when cancellation and half-close race. */
#include <stdbool.h>

#include "common/error.h"
#include "rpc/reflection.h"

#define ANSWER_ARENA_LIMIT (16u << 20) /* far above the whole descriptor set */

struct stream {
    bool alpha;
    bool done;
};

/* Answers msg; on failure finishes the call with the error. */
static void answer(rpc_call *call, struct stream *st, const ProtobufCMessage *msg)
{
    const ProtobufCMessageDescriptor *want =
        st->alpha ? &grpc__reflection__v1alpha__server_reflection_request__descriptor
                  : &grpc__reflection__v1__server_reflection_request__descriptor;
    int rv = PINS_ENOMEM;
    pins_arena *a = NULL;
    if (msg->descriptor != want) {
        rv = PINS_EINTERNAL;
        goto out;
    }
    a = pins_arena_new(ANSWER_ARENA_LIMIT);
    if (a == NULL)
        goto out;
    if (st->alpha) {
        Grpc__Reflection__V1alpha__ServerReflectionResponse *resp;
        rv = rpc__reflection_answer_v1alpha(
            a, (const Grpc__Reflection__V1alpha__ServerReflectionRequest *)msg, &resp);
        if (rv == 0)
            rv = rpc_call_send(call, &resp->base);
    } else {
        Grpc__Reflection__V1__ServerReflectionResponse *resp;
        rv = rpc__reflection_answer(a, (const Grpc__Reflection__V1__ServerReflectionRequest *)msg,
                                    &resp);
        if (rv == 0)
            rv = rpc_call_send(call, &resp->base);
    }
out:
    pins_arena_free(a);
    if (rv != 0) {
        st->done = true;
        rpc_call_fail(call, rv, rv == PINS_EUNAVAILABLE ? "server reflection is not ready" : NULL);
    }
}

static void on_message(rpc_call *call, const ProtobufCMessage *msg, void *arg)
{
    struct stream *st = arg;
    if (st->done)
        return;
    if (msg == NULL) {
        st->done = true;
        rpc_call_finish(call);
        return;
    }
    answer(call, st, msg);
}

static void on_cancel(rpc_call *call, void *arg)
{
    struct stream *st = arg;
    if (st->done)
        return;
    st->done = true;
    rpc_call_finish(call);
}

static void serve(rpc_call *call, bool alpha)
{
    struct stream *st = pins_arena_calloc(rpc_call_arena(call), 1, sizeof(*st));
    if (st == NULL) {
        rpc_call_fail(call, PINS_ENOMEM, NULL);
        return;
    }
    st->alpha = alpha;
    const ProtobufCMessage *first = rpc_call_request(call);
    if (first == NULL) {
        rpc_call_finish(call);
        return;
    }
    rpc_call_on_cancel(call, on_cancel, st);
    rpc_call_on_message(call, on_message, st);
    answer(call, st, first);
}

void rpc__reflection_v1_handler(rpc_call *call)
{
    serve(call, false);
}

void rpc__reflection_v1alpha_handler(rpc_call *call)
{
    serve(call, true);
}
