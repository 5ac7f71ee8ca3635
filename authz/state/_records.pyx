# cython: language_level=3
"""The fields of the task and agent records, declared in _records.pxd: model.TaskState and model.AgentState
(the records, their rules and their stored form: authz/state/model.py) subclass these, so that compiled
code (authz/state/_step.pyx) reads and writes the fields of a record as C struct members."""


cdef class TaskFields:
    """model.TaskState's fields (see model.py)."""


cdef class AgentFields:
    """model.AgentState's fields (see model.py)."""
