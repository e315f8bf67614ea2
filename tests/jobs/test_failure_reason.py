"""A failed job's kept reason: what the library said, with the studio's own paths made relative
to its home (the reason reaches the page; the server's paths stay on the server)."""

from __future__ import annotations

from limner.errors import UsageError
from limner.jobs.executors import failure_reason


def test_paths_inside_the_home_are_written_relative_to_it(tmp_path):
    home = tmp_path / "studio"
    (home / "uploads" / "u2").mkdir(parents=True)
    err = UsageError(f"{home}/uploads/u2/x.png: the mask is all black", field="mask")
    reason = failure_reason(err, home)
    assert reason == "mask: uploads/u2/x.png: the mask is all black"
    assert str(tmp_path) not in reason
    link = tmp_path / "link"
    link.symlink_to(home)
    assert str(tmp_path) not in failure_reason(ValueError(f"bad file {home.resolve()}/runs/u1/a"), link)
    # without a home, or for a path elsewhere, the message is unchanged
    assert failure_reason(err) == f"mask: {home}/uploads/u2/x.png: the mask is all black"
    assert failure_reason(OSError("/etc/x: denied"), home) == "OSError: /etc/x: denied"
    assert failure_reason(MemoryError()).startswith("out of memory")
