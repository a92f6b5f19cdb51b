/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * pykpatch author API, with the names kpatch users know.
 *
 * A patch includes this header ("#include \"kpatch-macros.h\"") in the files
 * it changes; kpatch-build puts its directory on the include path.
 *
 *   KPATCH_PRE_PATCH_CALLBACK(fn)     int fn(patch_object *obj): may veto
 *   KPATCH_POST_PATCH_CALLBACK(fn)    void fn(patch_object *obj)
 *   KPATCH_PRE_UNPATCH_CALLBACK(fn)   void fn(patch_object *obj)
 *   KPATCH_POST_UNPATCH_CALLBACK(fn)  void fn(patch_object *obj)
 *       Run by the kernel for the object (vmlinux or the module) whose source
 *       file declares them, also when that module loads after the patch.
 *   KPATCH_IGNORE_FUNCTION(fn), KPATCH_IGNORE_SECTION("name")
 *       Keep a changed function or section out of the patch.
 *   KPATCH_PRINTK(fmt, ...)
 *       printk that does not make the compiler treat the caller as cold.
 *   Shadow variables: use the kernel's klp_shadow_alloc/get/get_or_alloc/
 *   free/free_all from <linux/livepatch.h> directly.
 */
#ifndef _PYKPATCH_KPATCH_MACROS_H
#define _PYKPATCH_KPATCH_MACROS_H

#include <linux/compiler.h>
#include <linux/jiffies.h>
#include <linux/livepatch.h>
#include <linux/printk.h>

typedef struct klp_object patch_object;

/* The object this translation unit is compiled into, as kbuild says. */
#ifdef MODULE
#define __PYKPATCH_OBJNAME KBUILD_MODNAME
#else
#define __PYKPATCH_OBJNAME "vmlinux"
#endif

struct pykpatch_callback_entry {
	void *fn;
	const char *objname;
};

#define __PYKPATCH_CALLBACK(kind, ret, _fn)					\
	static ret (*__pykpatch_##kind##_type_##_fn)(patch_object *)		\
		__maybe_unused = _fn;						\
	static struct pykpatch_callback_entry __pykpatch_##kind##_##_fn		\
	__used __aligned(8) __section(".pykpatch.callbacks." #kind) = {	\
		.fn = (void *)_fn,						\
		.objname = __PYKPATCH_OBJNAME,					\
	}

#define KPATCH_PRE_PATCH_CALLBACK(_fn)    __PYKPATCH_CALLBACK(pre_patch, int, _fn)
#define KPATCH_POST_PATCH_CALLBACK(_fn)   __PYKPATCH_CALLBACK(post_patch, void, _fn)
#define KPATCH_PRE_UNPATCH_CALLBACK(_fn)  __PYKPATCH_CALLBACK(pre_unpatch, void, _fn)
#define KPATCH_POST_UNPATCH_CALLBACK(_fn) __PYKPATCH_CALLBACK(post_unpatch, void, _fn)

#define KPATCH_IGNORE_SECTION(_sec)						\
	static char *__pykpatch_ignore_section_##__LINE__			\
	__used __section(".kpatch.ignore.sections") = _sec

#define KPATCH_IGNORE_FUNCTION(_fn)						\
	static void *__pykpatch_ignore_func_##_fn				\
	__used __section(".kpatch.ignore.functions") = _fn

#define KPATCH_PRINTK(_fmt, ...)						\
({										\
	if (jiffies)								\
		printk(_fmt, ## __VA_ARGS__);					\
})

#endif /* _PYKPATCH_KPATCH_MACROS_H */
