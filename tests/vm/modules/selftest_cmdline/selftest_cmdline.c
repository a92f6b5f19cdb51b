// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * A hand-written livepatch module, in the style of the kernel's
 * samples/livepatch/livepatch-sample.c, that proves the test bed before
 * kpatch-build exists: it replaces cmdline_proc_show() so that
 * /proc/cmdline prints a marker line instead of the command line.
 */
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/module.h>
#include <linux/seq_file.h>

static int selftest_cmdline_proc_show(struct seq_file *m, void *v)
{
	seq_puts(m, "pykpatch-selftest: /proc/cmdline is live patched\n");
	return 0;
}

static struct klp_func funcs[] = {
	{
		.old_name = "cmdline_proc_show",
		.new_func = selftest_cmdline_proc_show,
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
};

static int selftest_cmdline_init(void)
{
	return klp_enable_patch(&patch);
}

static void selftest_cmdline_exit(void)
{
}

module_init(selftest_cmdline_init);
module_exit(selftest_cmdline_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
