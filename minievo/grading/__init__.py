"""Grading whose verdict is made outside the student's code.

``minievo assignments grade`` (:func:`minievo.assignments.grade`) runs every task of every
student in a worker process of its own (:mod:`minievo.grading.worker`), with a time and a
memory limit, and the task's tests in the grader's process (:mod:`minievo.grading.runner`):

* the tests are the grader's files (the visible ones of its checkout or student copy, and with
  ``--hidden`` the instructor's hidden ones); a submission's own tests, ``conftest.py`` and
  ``minievo.feedback`` are never loaded;
* each test runs against the grader's own ``minievo``, except the task's function, which sends
  its inputs to the worker, where the student's code computes, and takes back plain arrays and
  numbers (:mod:`minievo.grading.wire`: JSON plus raw array bytes, never a pickle);
* every check and every expected value stays in the grader's process, which never imports the
  student's package;
* a loop, a crash, ``os._exit``, a memory blow-up or a package that does not import stops the
  task (or, for the package, the student) with the reason recorded, and grading goes on.

docs/teaching.md ("Threat model") lists what this resists and what it does not.
"""

from minievo.grading.runner import (
    Case,
    Limits,
    Stopped,
    TaskRun,
    collect,
    grade_folder,
    sanitizer_problem,
)

__all__ = ["Case", "Limits", "Stopped", "TaskRun", "collect", "grade_folder",
           "sanitizer_problem"]
