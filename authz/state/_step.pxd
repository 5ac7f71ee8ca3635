# cython: language_level=3
"""The per-call pieces of the task-state step (authz/state/_step.pyx), for the embedded store's single-call
path (authz/state/_lmdb_call.pyx) to build the same views and count the same way."""
from authz.state._records cimport AgentFields, TaskFields


cdef dict task_view(TaskFields state, double now)
cdef dict agent_view(AgentFields agent, double now)
cdef bint counted_here(TaskFields state, tuple checked, object cost) except -1
cdef int count_allowed(TaskFields state, AgentFields agent, tuple checked, object cost, double now) except -1
cdef tuple validated(dict memo, object stored, object labels, object cfg)
