"""IGT's ``tests/intel/xe_eudebug.c`` subtests, ported: each registered under its IGT name.

``registry`` holds the names and runs the matching; ``runner`` is ``xe-eudebug igt``; the
subtests live in ``iface``, ``vm_bind``, ``vm_bind_clear``, ``discovery`` and ``metadata``, on the
building blocks of ``clients``.  ``tests/test_igt_subtests.py`` runs the same registry through
pytest.
"""
