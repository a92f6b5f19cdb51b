// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * pykpatch livepatch module core.
 *
 * kpatch-build links this file with the objects its differ wrote.  Those
 * objects list the functions to replace in the .pykpatch.funcs section and
 * the callbacks in .pykpatch.callbacks.*; the linker script brackets each
 * section with start and end symbols.  At init this builds the kernel's
 * klp_patch / klp_object / klp_func structures from those tables and calls
 * klp_enable_patch(): the kernel does the rest (ftrace redirection and the
 * per-task consistency model).
 */
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/string.h>

#include "pykpatch-module.h"

#ifndef PYKPATCH_REPLACE
#define PYKPATCH_REPLACE 1
#endif

extern struct pykpatch_func __pykpatch_funcs[], __pykpatch_funcs_end[];
extern struct pykpatch_callback __pykpatch_callbacks_pre_patch[], __pykpatch_callbacks_pre_patch_end[];
extern struct pykpatch_callback __pykpatch_callbacks_post_patch[], __pykpatch_callbacks_post_patch_end[];
extern struct pykpatch_callback __pykpatch_callbacks_pre_unpatch[], __pykpatch_callbacks_pre_unpatch_end[];
extern struct pykpatch_callback __pykpatch_callbacks_post_unpatch[], __pykpatch_callbacks_post_unpatch_end[];

static struct klp_patch pykpatch_patch;

/* Keeps the tables' output section allocated (see pykpatch.lds). */
static const unsigned long pykpatch_anchor __used __section(".pykpatch.anchor") = 0;

/* klp_object.name is NULL for the core kernel. */
static const char *klp_name(const char *objname)
{
	return strcmp(objname, "vmlinux") ? objname : NULL;
}

static bool same_object(const char *a, const char *b)
{
	return strcmp(a, b) == 0;
}

/* Distinct object names of the function table and of every callback table. */
static int count_objects(void)
{
	struct pykpatch_func *f;
	struct pykpatch_callback *tables[][2] = {
		{ __pykpatch_callbacks_pre_patch, __pykpatch_callbacks_pre_patch_end },
		{ __pykpatch_callbacks_post_patch, __pykpatch_callbacks_post_patch_end },
		{ __pykpatch_callbacks_pre_unpatch, __pykpatch_callbacks_pre_unpatch_end },
		{ __pykpatch_callbacks_post_unpatch, __pykpatch_callbacks_post_unpatch_end },
	};
	int n = 0, t;
	struct pykpatch_callback *c;

	/* An upper bound is enough: unused slots stay zeroed and end the array. */
	for (f = __pykpatch_funcs; f < __pykpatch_funcs_end; f++)
		n++;
	for (t = 0; t < ARRAY_SIZE(tables); t++)
		for (c = tables[t][0]; c < tables[t][1]; c++)
			n++;
	return n;
}

static struct klp_object *find_or_add_object(struct klp_object *objs, const char *objname)
{
	struct klp_object *obj;

	for (obj = objs; obj->funcs; obj++)
		if ((obj->name == NULL && klp_name(objname) == NULL) ||
		    (obj->name && klp_name(objname) && same_object(obj->name, objname)))
			return obj;
	obj->name = klp_name(objname);
	/* Filled by add_functions; an object with callbacks only keeps it empty. */
	obj->funcs = kcalloc(__pykpatch_funcs_end - __pykpatch_funcs + 1,
			     sizeof(struct klp_func), GFP_KERNEL);
	return obj->funcs ? obj : NULL;
}

static int add_functions(struct klp_object *objs)
{
	struct pykpatch_func *f;

	for (f = __pykpatch_funcs; f < __pykpatch_funcs_end; f++) {
		struct klp_object *obj = find_or_add_object(objs, f->objname);
		struct klp_func *func;

		if (!obj)
			return -ENOMEM;
		for (func = obj->funcs; func->old_name; func++)
			;
		func->old_name = f->old_name;
		func->new_func = f->new_func;
		func->old_sympos = f->sympos;
	}
	return 0;
}

static int add_callbacks(struct klp_object *objs, struct pykpatch_callback *start,
			 struct pykpatch_callback *end, int kind)
{
	struct pykpatch_callback *c;

	for (c = start; c < end; c++) {
		struct klp_object *obj = find_or_add_object(objs, c->objname);

		if (!obj)
			return -ENOMEM;
		switch (kind) {
		case 0: obj->callbacks.pre_patch = c->fn; break;
		case 1: obj->callbacks.post_patch = c->fn; break;
		case 2: obj->callbacks.pre_unpatch = c->fn; break;
		default: obj->callbacks.post_unpatch = c->fn; break;
		}
	}
	return 0;
}

static void free_objects(struct klp_object *objs)
{
	struct klp_object *obj;

	if (!objs)
		return;
	for (obj = objs; obj->funcs; obj++)
		kfree(obj->funcs);
	kfree(objs);
}

static int __init pykpatch_init(void)
{
	struct klp_object *objs;
	int ret;

	objs = kcalloc(count_objects() + 1, sizeof(*objs), GFP_KERNEL);
	if (!objs)
		return -ENOMEM;
	ret = add_functions(objs);
	if (!ret)
		ret = add_callbacks(objs, __pykpatch_callbacks_pre_patch,
				    __pykpatch_callbacks_pre_patch_end, 0);
	if (!ret)
		ret = add_callbacks(objs, __pykpatch_callbacks_post_patch,
				    __pykpatch_callbacks_post_patch_end, 1);
	if (!ret)
		ret = add_callbacks(objs, __pykpatch_callbacks_pre_unpatch,
				    __pykpatch_callbacks_pre_unpatch_end, 2);
	if (!ret)
		ret = add_callbacks(objs, __pykpatch_callbacks_post_unpatch,
				    __pykpatch_callbacks_post_unpatch_end, 3);
	if (ret) {
		free_objects(objs);
		return ret;
	}
	pykpatch_patch.mod = THIS_MODULE;
	pykpatch_patch.objs = objs;
	pykpatch_patch.replace = PYKPATCH_REPLACE;
	ret = klp_enable_patch(&pykpatch_patch);
	if (ret)
		free_objects(objs);
	return ret;
}

static void __exit pykpatch_exit(void)
{
	free_objects(pykpatch_patch.objs);
}

module_init(pykpatch_init);
module_exit(pykpatch_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
