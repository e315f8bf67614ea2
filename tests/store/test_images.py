"""Images: add, dedupe by pixels, read, rate/tag, soft delete, versions, ownership, boards."""

from __future__ import annotations

import pytest

from limner.errors import LimnerError, UsageError
from limner.store import Forbidden, NotFound

from .conftest import make_record, write_png


@pytest.fixture
def alice(store):
    return store.create_user("alice", "alice-password")


@pytest.fixture
def bob(store):
    return store.create_user("bob", "bob-password")


def test_add_and_get_keeps_record_and_columns(store, alice, add):
    image_id = add(alice, "a red heart", seed=7, negative="blurry", sampler="heun", steps=12, cfg=4.5)
    img = store.get_image(alice, image_id)
    assert (img.prompt, img.negative, img.seed, img.sampler, img.steps, img.cfg) == (
        "a red heart", "blurry", 7, "heun", 12, 4.5)
    assert img.model == "run-a" and img.family == "diffusion" and img.owner_id == alice.id
    assert img.record["model_hash"] == "abc123" and img.record["batch_seeds"] == [7]
    assert img.path.startswith(f"images/u{alice.id}/") and (store.home / img.path).is_file()
    assert img.thumb_path and (store.home / img.thumb_path).is_file()
    assert store.image_file(alice, image_id) == (store.home / img.path).resolve()


def test_identical_pixels_are_stored_once_per_owner(store, alice, bob, add):
    first = add(alice, "one", seed=3)
    again = add(alice, "one again", seed=3)  # same pixels (seeded by 3), different record
    assert again == first
    files = list((store.home / "images" / f"u{alice.id}").rglob("*.png"))
    assert len(files) == 1, files  # the duplicate file was removed
    assert add(bob, "one", seed=3) != first  # another owner keeps their own copy


def test_file_outside_home_is_refused(store, alice, tmp_path):
    record = make_record()
    outside = write_png(tmp_path / "elsewhere.png", record)
    with pytest.raises(LimnerError, match="not inside the studio home"):
        store.add_image(outside, record, alice)


def test_rating_tags_and_validation(store, alice, add):
    image_id = add(alice)
    img = store.update_image(alice, image_id, rating=4, tags=["  cat ", "cat", "night sky"])
    assert img.rating == 4 and img.tags == ["cat", "night sky"]
    assert store.update_image(alice, image_id, rating=None).rating is None
    for bad in (6, -1, True, 2.5):
        with pytest.raises(UsageError, match="rating"):
            store.update_image(alice, image_id, rating=bad)
    with pytest.raises(UsageError, match="tags"):
        store.update_image(alice, image_id, tags=["x" * 65])


def test_soft_delete_and_restore(store, alice, add):
    image_id = add(alice)
    store.delete_image(alice, image_id)
    store.delete_image(alice, image_id)  # idempotent
    with pytest.raises(NotFound):
        store.get_image(alice, image_id)
    assert [i.id for i in store.search(alice, mode="text").items] == []
    from limner.store import Filters

    assert [i.id for i in store.search(alice, filters=Filters(deleted=True)).items] == [image_id]
    store.restore_image(alice, image_id)
    assert store.get_image(alice, image_id).deleted_at is None


def test_purge_removes_row_and_files(store, alice, add):
    image_id = add(alice)
    img = store.get_image(alice, image_id)
    store.purge_image(alice, image_id)
    assert not (store.home / img.path).exists() and not (store.home / img.thumb_path).exists()
    with pytest.raises(NotFound):
        store.purge_image(alice, image_id)


def test_versions_link_and_refuse_cycles(store, alice, add):
    a = add(alice, seed=1)
    b = add(alice, seed=2)
    path = store.new_image_path(alice, "c")
    record = make_record(seed=3)
    c = store.add_image(write_png(path, record), record, alice, parent_id=b)
    store.link_version(alice, b, a)
    assert [i.id for i in store.versions(alice, c)] == [a, b, c]
    with pytest.raises(UsageError, match="ancestor"):
        store.link_version(alice, a, c)


def test_users_see_only_their_own_images(store, alice, bob, add):
    mine = add(alice, "alice's cat", seed=1)
    theirs = add(bob, "bob's dog", seed=2)
    assert [i.id for i in store.search(alice, mode="text").items] == [mine]
    assert [i.id for i in store.search(bob, mode="text").items] == [theirs]
    for call in (lambda: store.get_image(bob, mine), lambda: store.update_image(bob, mine, rating=1),
                 lambda: store.delete_image(bob, mine), lambda: store.image_file(bob, mine),
                 lambda: store.link_version(bob, theirs, mine)):
        with pytest.raises(NotFound):
            call()
    admin = store.create_user("root", "root-password", role="admin")
    assert {i.id for i in store.search(admin, mode="text").items} == {mine, theirs}


def test_board_sharing_viewer_and_editor(store, alice, bob, add):
    carol = store.create_user("carol", "carol-password")
    shared = add(alice, "shared sunset", seed=1)
    private = add(alice, "private", seed=2)
    board = store.create_board(alice, "Sunsets")
    store.add_to_board(alice, board.id, shared)
    store.share_board(alice, board.id, "bob", "viewer")
    assert [i.id for i in store.search(bob, mode="text").items] == [shared]
    assert store.get_image(bob, shared).prompt == "shared sunset"
    with pytest.raises(NotFound):
        store.get_image(bob, private)
    with pytest.raises(NotFound):  # seeing is not owning
        store.update_image(bob, shared, rating=5)
    bobs = add(bob, "bob's own", seed=3)
    with pytest.raises(Forbidden):  # viewers cannot add
        store.add_to_board(bob, board.id, bobs)
    store.share_board(alice, board.id, "bob", "editor")
    store.add_to_board(bob, board.id, bobs)
    with pytest.raises(NotFound):  # an editor cannot put an image they cannot see on the board
        store.add_to_board(bob, board.id, private)
    from limner.store import Filters

    assert {i.id for i in store.search(alice, filters=Filters(board=board.id)).items} == {shared, bobs}
    with pytest.raises(NotFound):  # carol is not a member
        store.search(carol, filters=Filters(board=board.id))
    assert [b.name for b in store.list_boards(bob)] == ["Sunsets"]
    assert store.list_boards(carol) == []
    with pytest.raises(Forbidden):
        store.delete_board(bob, board.id)
    assert sorted(store.board_audience(board.id)) == sorted([alice.id, bob.id])
    store.delete_board(alice, board.id)
    assert [i.id for i in store.search(bob, mode="text").items] == [bobs]
