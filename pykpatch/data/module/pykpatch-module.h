/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Tables the differ writes and the module core reads (see pykpatch.differ.funcs). */
#ifndef _PYKPATCH_MODULE_H
#define _PYKPATCH_MODULE_H

struct pykpatch_func {
	void *new_func;
	const char *old_name;
	const char *objname;	/* "vmlinux" or the module name */
	unsigned long sympos;
};

struct pykpatch_callback {
	void *fn;
	const char *objname;
};

#endif
