// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * Livepatch for kpatch_sleeper_wait() in the kpatch_sleeper module.  While
 * the "kpatch-sleeper" kthread sleeps in the old function, the transition
 * cannot finish: that is what the stalled-transition tests need.  The new
 * function waits the same way and counts its calls, shown in dmesg.
 */
#include <linux/kernel.h>
#include <linux/kthread.h>
#include <linux/livepatch.h>
#include <linux/module.h>
#include <linux/wait.h>

extern wait_queue_head_t kpatch_sleeper_wq;
extern bool kpatch_sleeper_released;

static void livepatch_kpatch_sleeper_wait(void)
{
	pr_info("livepatch_sleeper: new kpatch_sleeper_wait() called\n");
	wait_event_idle(kpatch_sleeper_wq,
			READ_ONCE(kpatch_sleeper_released) || kthread_should_stop());
}

static struct klp_func funcs[] = {
	{
		.old_name = "kpatch_sleeper_wait",
		.new_func = livepatch_kpatch_sleeper_wait,
	},
	{ }
};

static struct klp_object objs[] = {
	{
		.name = "kpatch_sleeper",
		.funcs = funcs,
	},
	{ }
};

static struct klp_patch patch = {
	.mod = THIS_MODULE,
	.objs = objs,
};

static int livepatch_sleeper_init(void)
{
	return klp_enable_patch(&patch);
}

static void livepatch_sleeper_exit(void)
{
}

module_init(livepatch_sleeper_init);
module_exit(livepatch_sleeper_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
