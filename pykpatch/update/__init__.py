"""From a Debian kernel security update to one cumulative live patch.

``kpatch-build --debian-update VERSION`` takes the difference between the
target kernel's ``linux-source`` and VERSION's (:mod:`.sources`), decides
what of it this kernel builds and can be patched (:mod:`.plan`), builds what
can be in one module, and reports every changed file with the Debian
changelog items that touch it (:mod:`.changelog`, :mod:`.report`).
"""
