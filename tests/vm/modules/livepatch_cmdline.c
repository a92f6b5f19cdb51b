// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * A hand-written cumulative livepatch for the `kpatch` CLI tests, in the
 * style of samples/livepatch/livepatch-sample.c: /proc/cmdline prints
 * MARKER instead of the command line.  It carries the origin keys that
 * kpatch-build writes (docs/kpatch-cli.md), spelled with __MODULE_INFO
 * because a dotted tag cannot go through MODULE_INFO.
 *
 * Built as two modules (livepatch_cmdline_a/ and _b/ link to this file);
 * each directory's Kbuild sets PATCH_LETTER and PATCH_SHA256.
 */
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/module.h>
#include <linux/seq_file.h>

#define MARKER "kpatch-cli-test: cmdline patch " PATCH_LETTER

static int livepatch_cmdline_proc_show(struct seq_file *m, void *v)
{
	seq_puts(m, MARKER "\n");
	return 0;
}

static struct klp_func funcs[] = {
	{
		.old_name = "cmdline_proc_show",
		.new_func = livepatch_cmdline_proc_show,
	},
	{ }
};

static struct klp_object objs[] = {
	{
		/* name being NULL means vmlinux */
		.funcs = funcs,
	},
	{ }
};

static struct klp_patch patch = {
	.mod = THIS_MODULE,
	.objs = objs,
	.replace = true,
};

static int livepatch_cmdline_init(void)
{
	return klp_enable_patch(&patch);
}

static void livepatch_cmdline_exit(void)
{
}

module_init(livepatch_cmdline_init);
module_exit(livepatch_cmdline_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
__MODULE_INFO(pykpatch.patches, pykpatch_patches,
	      "cmdline-" PATCH_LETTER ".patch:sha256:" PATCH_SHA256);
__MODULE_INFO(pykpatch.version, pykpatch_version, "test");
