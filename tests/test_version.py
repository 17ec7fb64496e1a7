import subprocess
import sys

from dgmerge import __version__, version


def git(repo, *args):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def test_the_version_names_the_commit_and_uncommitted_edits(tmp_path):
    git(tmp_path, "init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    git(tmp_path, "add", "a.py")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "--short=12", "HEAD"],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert version.read_code_version(tmp_path) == f"{__version__}+g{head}"
    (tmp_path / "a.py").write_text("x = 2\n")
    assert version.read_code_version(tmp_path) == f"{__version__}+g{head}-dirty"
    (tmp_path / "untracked.py").write_text("")
    git(tmp_path, "checkout", "-q", "a.py")
    assert version.read_code_version(tmp_path) == f"{__version__}+g{head}"


def test_edits_outside_the_package_source_do_not_make_it_dirty(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.py").write_text("x = 1\n")
    (tmp_path / "rows.jsonl").write_text("{}\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    (tmp_path / "rows.jsonl").write_text("{}\n{}\n")  # a run's results, snapshotted as it goes
    assert not version.read_code_version(tmp_path / "src").endswith("-dirty")
    (tmp_path / "src" / "a.py").write_text("x = 2\n")
    assert version.read_code_version(tmp_path / "src").endswith("-dirty")


def test_outside_a_checkout_it_is_the_package_version(tmp_path):
    assert version.read_code_version(tmp_path / "nowhere") == __version__


def test_the_version_is_read_at_import_not_when_a_row_is_written():
    # A fresh interpreter: import, then make git unusable (as a checkout that moved on would
    # give a different answer); the version must already be known.
    script = (
        "import subprocess\n"
        "from dgmerge import version\n"
        "def moved(*a, **k): raise AssertionError('read the checkout after import')\n"
        "subprocess.run = moved\n"
        "print(version.code_version())\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith(__version__)
