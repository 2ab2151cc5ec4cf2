from ringcast._ring cimport Ring

# WrongType unless ``payload`` is bytes-like (the codec checks what it encodes alike)
cdef int _check_payload(object payload) except -1


cdef class _Node:
    cdef dict children
    cdef _Node star
    cdef list subs
    cdef list tail_subs

    cdef bint empty(self)


cdef class _Match:
    cdef list rings
    cdef bint blocking


cdef class CoreRouter:
    cdef _Node root
    cdef dict cache
    cdef object memo_subject   # the last subject looked up, its cache and match
    cdef dict memo_cache
    cdef _Match memo_match
    cdef readonly Py_ssize_t cache_max
    cdef readonly Py_ssize_t subscriptions
    cdef readonly unsigned long long published
    cdef readonly unsigned long long delivered
    cdef readonly unsigned long long cache_misses
    cdef readonly Ring blocked_ring
    cdef public bint closed        # set by Router.close(): publishing raises Closed

    cdef _Match lookup(self, str subject)
    cdef _Match _miss(self, str subject)
    cdef int _publish(self, object subject, object payload, object headers) except -2
    cdef Py_ssize_t _publish_many(self, object subject, list items, object headers) except -1
