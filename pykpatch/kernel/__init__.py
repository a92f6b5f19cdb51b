"""Facts about the kernel that pykpatch depends on, each kept in one place."""
