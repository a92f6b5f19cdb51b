/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * kpatch's syscall helpers, so existing kpatch patches build unchanged.
 *
 * kpatch needed these because a syscall body lives in a notrace inline
 * (__do_sys_<name>) that ftrace cannot redirect.  pykpatch's differ patches
 * the traceable wrappers that call a changed untraceable static function, so
 * the kernel's own SYSCALL_DEFINEx works in a patch and these are aliases.
 */
#ifndef _PYKPATCH_KPATCH_SYSCALL_H
#define _PYKPATCH_KPATCH_SYSCALL_H

#include <linux/syscalls.h>

#define KPATCH_SYSCALL_DEFINE0(name)		SYSCALL_DEFINE0(name)
#define KPATCH_SYSCALL_DEFINE1(name, ...)	SYSCALL_DEFINE1(name, __VA_ARGS__)
#define KPATCH_SYSCALL_DEFINE2(name, ...)	SYSCALL_DEFINE2(name, __VA_ARGS__)
#define KPATCH_SYSCALL_DEFINE3(name, ...)	SYSCALL_DEFINE3(name, __VA_ARGS__)
#define KPATCH_SYSCALL_DEFINE4(name, ...)	SYSCALL_DEFINE4(name, __VA_ARGS__)
#define KPATCH_SYSCALL_DEFINE5(name, ...)	SYSCALL_DEFINE5(name, __VA_ARGS__)
#define KPATCH_SYSCALL_DEFINE6(name, ...)	SYSCALL_DEFINE6(name, __VA_ARGS__)

#endif /* _PYKPATCH_KPATCH_SYSCALL_H */
