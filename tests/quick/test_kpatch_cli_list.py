"""`list` and `info`, text and JSON, against a fake sysfs/proc tree.

The tree is fake (see the support module): these tests pin down how we
read it and the shape of the JSON; the VM tests read the real one.
"""

import json

from test_kpatch_cli_support import (  # noqa: F401  (fixtures)
    RELEASE, SHA, FakeTask, cli, fake, make_ko, no_real_kernel, origin_fields,
)


def _setup(fake, tmp_path, cli):
    """An enabled patch we loaded, a replaced one, one in transition, one installed."""
    ko = make_ko(tmp_path, modinfo=origin_fields())
    assert cli("load", str(ko))[0] == 0
    fake.add_module("livepatch_old")                      # replaced: module only
    fake.add_task(FakeTask(42, 43, "sleeper", ["sleeper_wait+0x2a/0x50 [sleeper]"]), state=0)
    fake.add_patch("livepatch_busy", transition=1,
                   functions={"vmlinux": ["meminfo_proc_show,1", "dup_name,2"],
                              "ext4": ["ext4_fill_super,1"]})
    (fake.host.livepatch / "livepatch_busy" / "ext4" / "patched").write_text("0\n")
    store = fake.host.store / RELEASE
    store.mkdir(parents=True)
    make_ko(store, "livepatch-installed.ko", name="livepatch_installed",
            modinfo=origin_fields(f"fix.patch:sha256:{SHA}"))


def test_list_json_shape(cli, fake, tmp_path) -> None:
    _setup(fake, tmp_path, cli)
    code, out, _ = cli("list", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["schema"] == 1
    assert report["kernel"] == {"release": RELEASE, "livepatch": True,
                                "in_transition": "livepatch_busy"}
    patches = {p["name"]: p for p in report["patches"]}
    assert list(patches) == ["livepatch_busy", "livepatch_test", "livepatch_old"]

    test = patches["livepatch_test"]
    assert test == {
        "name": "livepatch_test", "state": "enabled", "enabled": True, "transition": False,
        "registered": True, "module_loaded": True,
        "objects": [{"name": "vmlinux", "patched": True,
                     "functions": [{"name": "cmdline_proc_show", "sympos": 1}]}],
        "origin": {"patches": [{"file": "cmdline.patch", "sha256": SHA}],
                   "release": RELEASE, "tool_version": "0.1.0"},
        "file": str(fake.host.runtime / "livepatch_test.ko"),
        "behind": [],
    }
    old = patches["livepatch_old"]
    assert (old["state"], old["registered"], old["module_loaded"], old["objects"]) == \
        ("disabled", False, True, [])
    busy = patches["livepatch_busy"]
    assert busy["state"] == "enabling" and busy["origin"] is None
    assert busy["objects"][0]["name"] == "ext4" and busy["objects"][0]["patched"] is False
    assert busy["objects"][1]["functions"] == [{"name": "dup_name", "sympos": 2},
                                               {"name": "meminfo_proc_show", "sympos": 1}]
    assert busy["behind"] == [{"pid": 42, "tid": 43, "comm": "sleeper", "patch_state": 0,
                               "stack": ["sleeper_wait+0x2a/0x50 [sleeper]"]}]
    assert report["installed"] == [{
        "name": "livepatch_installed",
        "file": str(fake.host.store / RELEASE / "livepatch-installed.ko"),
        "release": RELEASE,
        "vermagic": f"{RELEASE} SMP preempt mod_unload modversions ",
        "origin": {"patches": [{"file": "fix.patch", "sha256": SHA}],
                   "release": RELEASE, "tool_version": "0.1.0"},
        "loaded": False, "enabled": False,
    }]


def test_list_text(cli, fake, tmp_path) -> None:
    _setup(fake, tmp_path, cli)
    code, out, _ = cli("list")
    assert code == 0
    assert out.splitlines() == [
        "Loaded patch modules:",
        "livepatch_busy [enabling]",
        "    origin: unknown (not built by pykpatch kpatch-build, or its file is not at hand)",
        "    ext4 (not loaded): ext4_fill_super",
        "    vmlinux: dup_name,2, meminfo_proc_show",
        "    1 task(s) not switched yet:",
        "      task 42/43 (sleeper) has not switched yet",
        "          sleeper_wait+0x2a/0x50 [sleeper]",
        "livepatch_test [enabled]",
        f"    patches: cmdline.patch (sha256 {SHA[:12]})",
        f"    built for {RELEASE} by pykpatch 0.1.0",
        "    vmlinux: cmdline_proc_show",
        "livepatch_old [disabled: replaced or disabled, module still loaded]",
        "    origin: unknown (not built by pykpatch kpatch-build, or its file is not at hand)",
        "",
        f"Installed patch modules ({RELEASE}):",
        "livepatch-installed.ko (livepatch_installed) [not loaded]",
    ]


def test_list_empty(cli, fake) -> None:
    code, out, _ = cli("list")
    assert code == 0
    assert "Loaded patch modules:\n  (none)" in out


def test_origin_of_a_loaded_installed_patch_comes_from_the_store(cli, fake) -> None:
    store = fake.host.store / RELEASE
    store.mkdir(parents=True)
    make_ko(store, "livepatch-installed.ko", name="livepatch_installed",
            modinfo=origin_fields(), build_id=b"\x05" * 20)
    fake.add_patch("livepatch_installed", with_module=False)
    fake.add_module("livepatch_installed", refcnt=1, build_id=b"\x05" * 20)
    report = json.loads(cli("list", "--json")[1])
    assert report["patches"][0]["origin"]["patches"][0]["file"] == "cmdline.patch"
    assert report["installed"][0]["enabled"] is True
    # a different build under the same name is not taken for it
    fake.add_module("livepatch_installed", refcnt=1, build_id=b"\x06" * 20)
    report = json.loads(cli("list", "--json")[1])
    assert report["patches"][0]["origin"] is None


def test_info_of_a_file(cli, fake, tmp_path) -> None:
    ko = make_ko(tmp_path, modinfo=origin_fields(), build_id=b"\x01" * 20)
    code, out, _ = cli("info", "--json", str(ko))
    assert code == 0
    report = json.loads(out)
    assert report["name"] == "livepatch_test"
    assert report["loaded"] is None and report["installed"] == []
    module = report["module"]
    assert module["livepatch"] is True and module["release"] == RELEASE
    assert module["build_id"] == "01" * 20
    assert module["modinfo"]["pykpatch.patches"] == [f"cmdline.patch:sha256:{SHA}"]
    code, out, _ = cli("info", str(ko))
    assert "name:      livepatch_test" in out and "state:     not loaded" in out
    assert f"  pykpatch.patches=cmdline.patch:sha256:{SHA}" in out


def test_info_of_a_loaded_name(cli, fake, tmp_path) -> None:
    assert cli("load", str(make_ko(tmp_path, modinfo=origin_fields())))[0] == 0
    report = json.loads(cli("info", "--json", "livepatch-test")[1])
    assert report["loaded"]["state"] == "enabled"
    assert report["module"]["origin"]["release"] == RELEASE
    out = cli("info", "livepatch_test")[1]
    assert "state:     enabled" in out and "vmlinux: cmdline_proc_show" in out


def test_info_of_a_patch_loaded_by_someone_else(cli, fake) -> None:
    fake.add_patch("livepatch_foreign")
    report = json.loads(cli("info", "--json", "livepatch_foreign")[1])
    assert report["module"] is None and report["loaded"]["registered"] is True
    assert "loaded by something other than kpatch" in cli("info", "livepatch_foreign")[1]


def test_info_of_an_unknown_name(cli, fake) -> None:
    code, _, err = cli("info", "nothing_here")
    assert code == 2 and "neither a .ko file, nor a loaded livepatch" in err


NEXT = "6.1.0-57-cloud-amd64"     # installed, not booted yet
OLDER = "6.1.0-54-cloud-amd64"    # installed, no patches
GONE = "6.1.0-50-cloud-amd64"     # patches left behind, kernel removed


def test_list_shows_the_installed_patches_of_every_kernel(cli, fake, tmp_path) -> None:
    for release in (RELEASE, NEXT, OLDER):
        (fake.host.modules_root / release / "kernel").mkdir(parents=True)
    assert cli("install", str(make_ko(tmp_path)))[0] == 0
    next_dir = tmp_path / "next"
    next_dir.mkdir()
    ko = make_ko(next_dir, "livepatch-next.ko", name="livepatch_next",
                 vermagic=f"{NEXT} SMP preempt mod_unload modversions ")
    assert cli("install", "-k", NEXT, str(ko))[0] == 0
    gone = fake.host.store / GONE
    gone.mkdir(parents=True)
    make_ko(gone, "livepatch-old.ko", name="livepatch_old",
            vermagic=f"{GONE} SMP preempt mod_unload modversions ")

    report = json.loads(cli("list", "--json")[1])
    kernels = {k["release"]: k for k in report["kernels"]}
    assert list(kernels) == [RELEASE, NEXT, OLDER, GONE]
    assert (kernels[RELEASE]["running"], kernels[NEXT]["running"]) == (True, False)
    assert [p["name"] for p in kernels[NEXT]["patches"]] == ["livepatch_next"]
    assert kernels[NEXT]["patches"][0]["loaded"] is False
    assert kernels[OLDER]["patches"] == [] and kernels[OLDER]["installed"] is True
    assert kernels[GONE]["installed"] is False
    assert report["installed"] == kernels[RELEASE]["patches"]

    text = cli("list")[1].splitlines()
    at = text.index(f"Installed patch modules ({NEXT}, installed, not running):")
    assert text[at + 1] == "livepatch-next.ko (livepatch_next)"
    at = text.index(f"Installed patch modules ({OLDER}, installed, not running):")
    assert f"kpatch-build -k {OLDER}" in text[at + 1]
    assert f"Installed patch modules ({GONE}, not installed on this machine):" in text


def test_a_kernel_without_patches_is_not_listed_when_the_running_one_has_none(cli, fake) -> None:
    (fake.host.modules_root / NEXT / "kernel").mkdir(parents=True)
    text = cli("list")[1]
    assert NEXT not in text
    assert [k["release"] for k in json.loads(cli("list", "--json")[1])["kernels"]] == [RELEASE, NEXT]
