"""Images a recipe saves (``ctx.save_image``): run artifacts of kind ``image`` that the Runs tab shows."""

from __future__ import annotations

import pytest
from PIL import Image

from app.testing import open_test_studio
from app.ui.runs_actions import RunsActions


def test_saved_images_are_run_artifacts_the_runs_tab_shows_newest_first(tmp_path):
    import plugins.blockdrop as any_plugin  # any recipe gives a real TrainContext

    with open_test_studio(tmp_path, [any_plugin]) as studio:
        method, recipe = "blockdrop", studio.registry.methods["blockdrop"].recipes[0].name
        with studio.train_context(method, recipe) as ctx:
            first = ctx.save_image("samples", Image.new("RGB", (8, 8), "red"), step=5)
            ctx.save_image("samples", Image.new("RGB", (8, 8), "blue"), step=10)
            again = ctx.save_image("samples", Image.new("RGB", (8, 8), "green"), step=5)  # replaces step 5
            for bad in ("../escape", "a/b", "", ".hidden"):
                with pytest.raises(ValueError, match="image name"):
                    ctx.save_image(bad, Image.new("RGB", (8, 8)))
            run_id = ctx.run_id
        assert first == again and first.parent == ctx.run_dir / "images" and first.name == "samples-000005.png"
        assert Image.open(first).getpixel((0, 0)) == (0, 128, 0)
        images = studio.store.artifacts(run_id, kind="image")
        assert sorted(a.name for a in images) == ["samples-000005", "samples-000010"]
        actions = RunsActions(studio.store, studio.registry, studio.settings)
        shown = actions.run_images(run_id)
        assert [caption for _, caption in shown] == [a.name for a in images]  # the store's order: newest first
        assert shown[0][0].size == (8, 8)
        first.unlink()  # a deleted file is skipped, not an error
        assert [caption for _, caption in actions.run_images(run_id)] == ["samples-000010"]
        assert actions.run_images(None) == []
