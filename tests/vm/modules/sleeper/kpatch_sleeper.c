// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * A task that sleeps in a function until told to leave, to hold up a
 * livepatch transition on purpose (tests of `kpatch load` with stalled
 * tasks).  Not a livepatch itself: also the "ordinary module" of the tests.
 *
 * The kthread "kpatch-sleeper" waits inside kpatch_sleeper_wait() while
 * /proc/kpatch_sleeper reads 0.  `echo 1 > /proc/kpatch_sleeper` lets it out
 * (it then idles in kpatch_sleeper_thread()); `echo 0` sends it back in.
 * The wait is TASK_IDLE: the kernel's fake signal does not wake it and the
 * hung-task detector ignores it.
 */
#include <linux/kernel.h>
#include <linux/kthread.h>
#include <linux/module.h>
#include <linux/proc_fs.h>
#include <linux/seq_file.h>
#include <linux/uaccess.h>
#include <linux/wait.h>

DECLARE_WAIT_QUEUE_HEAD(kpatch_sleeper_wq);
EXPORT_SYMBOL_GPL(kpatch_sleeper_wq);
bool kpatch_sleeper_released;
EXPORT_SYMBOL_GPL(kpatch_sleeper_released);

static struct task_struct *thread;
static struct proc_dir_entry *proc_entry;

/* The function livepatch_sleeper replaces. */
noinline void kpatch_sleeper_wait(void)
{
	wait_event_idle(kpatch_sleeper_wq,
			READ_ONCE(kpatch_sleeper_released) || kthread_should_stop());
}

static int kpatch_sleeper_thread(void *unused)
{
	while (!kthread_should_stop()) {
		kpatch_sleeper_wait();
		wait_event_idle(kpatch_sleeper_wq,
				!READ_ONCE(kpatch_sleeper_released) || kthread_should_stop());
	}
	return 0;
}

static int kpatch_sleeper_show(struct seq_file *m, void *v)
{
	seq_printf(m, "%d\n", READ_ONCE(kpatch_sleeper_released));
	return 0;
}

static int kpatch_sleeper_open(struct inode *inode, struct file *file)
{
	return single_open(file, kpatch_sleeper_show, NULL);
}

static ssize_t kpatch_sleeper_write(struct file *file, const char __user *buf,
				    size_t count, loff_t *pos)
{
	char c;

	if (!count || get_user(c, buf))
		return -EINVAL;
	WRITE_ONCE(kpatch_sleeper_released, c == '1');
	wake_up_all(&kpatch_sleeper_wq);
	return count;
}

static const struct proc_ops kpatch_sleeper_ops = {
	.proc_open = kpatch_sleeper_open,
	.proc_read = seq_read,
	.proc_lseek = seq_lseek,
	.proc_release = single_release,
	.proc_write = kpatch_sleeper_write,
};

static int __init kpatch_sleeper_init(void)
{
	proc_entry = proc_create("kpatch_sleeper", 0600, NULL, &kpatch_sleeper_ops);
	if (!proc_entry)
		return -ENOMEM;
	thread = kthread_run(kpatch_sleeper_thread, NULL, "kpatch-sleeper");
	if (IS_ERR(thread)) {
		proc_remove(proc_entry);
		return PTR_ERR(thread);
	}
	return 0;
}

static void __exit kpatch_sleeper_exit(void)
{
	kthread_stop(thread);
	proc_remove(proc_entry);
}

module_init(kpatch_sleeper_init);
module_exit(kpatch_sleeper_exit);
MODULE_LICENSE("GPL");
