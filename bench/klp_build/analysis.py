"""Which tool is right where the two disagree: written by hand after reading the kernel's
code and the loaded result, keyed by bench patch; ``report.py`` puts each under its patch's
disagreement.  A disagreement without an entry is reported as not analysed."""

ANALYSIS = {
    "struct-layout-FAIL": """\
**pykpatch is right to refuse.** The patch adds `u32 pykpatch_flags` after `mask` in
`struct inotify_event_info` (fs/notify/inotify/inotify.h). It moves `wd`, `sync_cookie`,
`name_len` and `name` 4 bytes on, and the struct grows from 32 to 40 bytes. Every event already
queued when the patch loads was allocated and filled by the old `inotify_handle_inode_event()`,
with the old layout. The new `inotify_read()` reads those events with the new offsets.

klp-build compares symbol checksums. The five functions that use the struct changed, no data
symbol did, so it built a module. No check of klp-build or objtool looks at type layouts.
pykpatch compares the struct's layout in both objects' DWARF and refuses with the members that
moved. It also says what to do instead: keep the struct, and put new state in a shadow variable.

The guest shows the harm. The check queued a create event for `f1` before the module loaded and
read it while the patch was enabled. The new code took `name_len` from offset 32, where the old
event holds the first bytes of its name: `"f1"`, read as 0x3166 = 12646. It then copied 12646
bytes from offset 36 of a 64-byte slab object to user space. Hardened usercopy
(`CONFIG_HARDENED_USERCOPY`, on in Debian's config) stopped the copy with the kernel BUG quoted
above, and the reading process died. Without hardened usercopy, the read would have leaked about
12 KB of kernel heap to an unprivileged process. The other direction breaks too: after the patch
is disabled, events queued by the new code are read at the old offsets.

Per-task consistency cannot help here. It waits until no task runs an old function, but the old
data outlives the transition. klp-build's checks are on symbols: a changed *data object* is an
error (`changed data:`), but a type is not a symbol, and its usage text says nothing about
layouts. Catching this is left to whoever reviews the patch. pykpatch (`pykpatch/build/layout.py`)
makes it a refusal, with the reason and the way out.
""",
}
