/* interrupt.c -- stopping a long call from outside (Ctrl-C).
 *
 * A thread arms itself; a request (vaec_interrupt_request: async-signal-safe, so a SIGINT
 * handler may call it, from whichever thread the signal lands on) then makes the armed
 * thread's long calls stop at their next check, between chunks of about a millisecond of
 * work, with VAEC_ERR_INTERRUPTED. The flag is a lock-free atomic, the arming per thread:
 * a request stops the armed calls only, never those of threads that did not arm. */
#include "internal.h"

static _Atomic int requested;
static _Thread_local int armed;

void vaec_interrupt_arm(int on) {
    if (on) atomic_store(&requested, 0);
    armed = on != 0;
}

void vaec_interrupt_request(void) { atomic_store_explicit(&requested, 1, memory_order_relaxed); }

int vaec_interrupt_pending(void) { return armed && atomic_load_explicit(&requested, memory_order_relaxed); }

vaec_status vaec_interrupt_check(void) {
    return vaec_interrupt_pending() ? vaec_fail(VAEC_ERR_INTERRUPTED, "interrupted") : VAEC_OK;
}
