# cython: language_level=3
"""The fields of the task and agent records (model.TaskState and model.AgentState subclass these), for
compiled code (authz/state/_step.pyx) to read and write them without attribute lookups."""
from authz.state.windows cimport Window


cdef class TaskFields:
    cdef public object id, started, last, calls, denies, spend, overflow, tools, counts
    cdef public Window m1, h1
    cdef public object suspended_by, revoked, due
    cdef public object _tool_set, _tool_views, _tools_json, _labels_json, _view_tools, _view_labels


cdef class AgentFields:
    cdef public object id, last, due
    cdef public Window m1, h1


cpdef object due_after(double last, object ttl_s)
