"""LoRAs and embeddings in the studio: the lists a user sees, the check of <lora:...> tags in every
front door, and "train on my pictures" (mode train_lora) as a queued, charged job whose LoRA is
its user's alone."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

from test_server_api import FAST, make_client, wait_done

TXT2IMG = {"model": "tiny-random", "n_samples": 1, **FAST}


def write_kohya_lora(path, trigger: str | None = "sks", seed: int = 0, text: bool = False):
    """A kohya-format LoRA for tiny-random (lora_unet_..._to_q.lora_down.weight, .alpha), made as
    kohya's trainer makes one: PEFT adapters on the UNet's attention, in diffusers' kohya names;
    with `text`, also on the text encoder's attention (lora_te_text_model_encoder_layers_...),
    as most LoRAs people share have."""
    from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    from reverie.models.tiny import build_tiny

    unet = build_tiny().unet
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
        state = get_peft_model_state_dict(unet)
        tensors = convert_state_dict_to_kohya({f"unet.{k}": torch.randn_like(v) * 0.1 for k, v in state.items()})
        for layer in range(2) if text else ():  # tiny-random's text encoder: 2 layers, 32 wide
            for projection in ("q_proj", "k_proj", "v_proj", "out_proj"):
                key = f"lora_te_text_model_encoder_layers_{layer}_self_attn_{projection}"
                tensors[f"{key}.lora_down.weight"] = torch.randn(4, 32) * 0.3
                tensors[f"{key}.lora_up.weight"] = torch.randn(32, 4) * 0.3
                tensors[f"{key}.alpha"] = torch.tensor(4.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"ss_network_module": "networks.lora"} | ({"modelspec.description": f"trigger: {trigger}"} if trigger else {})
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


def write_embedding(path, width: int = 32, vectors: int = 2):
    """An A1111 textual-inversion embedding (.safetensors, `emb_params` [vectors, width])."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"emb_params": torch.randn(vectors, width, generator=torch.Generator().manual_seed(1))}, str(path))
    return path


@pytest.fixture
def models(tmp_path, monkeypatch):
    folder = tmp_path / "models"
    write_kohya_lora(folder / "Lora" / "paper-cut.safetensors")
    write_embedding(folder / "embeddings" / "grainy.safetensors")
    monkeypatch.setenv("REVERIE_MODELS", str(folder))
    return folder


def pictures_b64(count: int, side: int = 48) -> list[str]:
    """`count` small, different pictures of "the concept" (a red disc on a shifting ground), as base64 PNG."""
    out = []
    y, x = np.mgrid[0:side, 0:side]
    for i in range(count):
        array = np.zeros((side, side, 3), np.uint8)
        array[...] = (40 + 15 * i, 90, 160 - 10 * i)
        array[(x - side / 2 - i % 5) ** 2 + (y - side / 2) ** 2 < (side / 4) ** 2] = (220, 30, 30)
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        out.append(base64.b64encode(buffer.getvalue()).decode())
    return out


def refused(response, param: str) -> str:
    assert response.status_code == 422, response.text
    assert response.json()["error"]["param"] == param, response.json()
    return response.json()["error"]["message"]


def test_the_studio_lists_loras_and_embeddings_and_takes_only_their_names(tmp_path, models):
    with make_client(tmp_path) as client:
        [lora] = client.get("/api/v1/loras").json()
        assert lora | {"hash": None} == {"name": "paper-cut", "base": "a model attending to 32-wide text states",
                                         "format": "kohya", "hash": None, "own": False, "trigger": "sks",
                                         "weight": 0.8, "tag": "<lora:paper-cut:0.8>"}
        assert len(lora["hash"]) == 12
        [embedding] = client.get("/api/v1/embeddings").json()
        assert embedding["name"] == "grainy" and embedding["vectors"] == 2
        kinds = {m["kind"] for m in client.get("/api/v1/models").json()}
        assert not kinds & {"lora", "embedding"}  # they have lists of their own; a LoRA is not a model
        refused(client.post("/api/v1/jobs", json=TXT2IMG | {"prompt": "x", "model": "paper-cut"}), "model")

        job = client.post("/api/v1/jobs", json=TXT2IMG | {"prompt": "a fox, <lora:paper-cut:0.6> sks"})
        assert job.status_code == 202, job.text
        done = wait_done(client, job.json()["id"])
        assert done["status"] == "done", done["error"]
        assert done["images"][0]["settings"]["prompt"] == "a fox, <lora:paper-cut:0.6> sks"  # kept as typed

        before = len(client.get("/api/v1/jobs").json())
        for prompt in ("<lora:../../gallery:1> a fox", "<lora:/etc/passwd:1>", "<lora:papercut:1> typo",
                       "<lora:paper-cut:x> bad weight", "<lora:paper-cut:1"):
            message = refused(client.post("/api/v1/jobs", json=TXT2IMG | {"prompt": prompt}), "prompt")
            assert "gallery" not in message or "unknown LoRA" in message
        assert "paper-cut" in refused(client.post("/api/v1/jobs", json=TXT2IMG | {"prompt": "a fox",
                                                                                  "negative_prompt": "<lora:nope:1>"}),
                                      "negative_prompt")
        # every front door: A1111, OpenAI, a grid's cells, a video's prompts
        refused(client.post("/sdapi/v1/txt2img", json={"prompt": "<lora:nope:1> a fox", "steps": 2, "width": 64,
                                                       "height": 64}), "prompt")
        refused(client.post("/v1/images/generations", json={"prompt": "<lora:nope:1> a fox", "size": "256x256"}), "prompt")
        refused(client.post("/api/v1/jobs", json={"mode": "grid", "base": TXT2IMG | {"prompt": "a fox <lora:nope:1>"},
                                                  "x": "cfg=3,5"}), "prompt")
        refused(client.post("/api/v1/jobs", json={"mode": "video", "motion": "walk", "model": "tiny-random",
                                                  "prompts": ["a fox", "<lora:../x:1> a cat"], "frames": 2,
                                                  **FAST}), "prompts")
        assert len(client.get("/api/v1/jobs").json()) == before  # nothing was queued


def test_a_lora_trained_on_my_pictures_is_mine_alone(tmp_path, models, monkeypatch):
    from reverie.server import submit

    with make_client(tmp_path, multi_user=True, first_month_credits=20, monthly_credits=0) as client:
        gallery = client.app.state.studio.gallery
        ann, bob = gallery.add_user("ann", "pw"), gallery.add_user("bob", "pw")
        as_ann = {"Authorization": f"Bearer {gallery.new_api_key(ann.id)}"}
        as_bob = {"Authorization": f"Bearer {gallery.new_api_key(bob.id)}"}
        train = {"mode": "train_lora", "model": "tiny-random", "trigger": "zkx", "name": "my-disc", "steps": 4,
                 "rank": 4, "sample_every": 2, "pictures": pictures_b64(10), "seed": 5}

        assert "at least 10" in refused(client.post("/api/v1/jobs", json=train | {"pictures": pictures_b64(9)},
                                                    headers=as_ann), "pictures")
        refused(client.post("/api/v1/jobs", json=train | {"steps": 5000}, headers=as_ann), "steps")
        refused(client.post("/api/v1/jobs", json=train | {"steps": 40}, headers=as_ann), "sample_every")  # 20 grids
        refused(client.post("/api/v1/jobs", json=train | {"name": "paper-cut"}, headers=as_ann), "name")
        refused(client.post("/api/v1/jobs", json=train | {"name": "../evil"}, headers=as_ann), "name")
        refused(client.post("/api/v1/jobs", json=train | {"pictures": ["/etc/passwd"] * 10}, headers=as_ann), "pictures")
        assert not list(gallery.uploads_dir.iterdir())  # a refused request leaves no upload behind
        balance = client.get("/api/v1/me", headers=as_ann).json()["credits"]

        job = client.post("/api/v1/jobs", json=train, headers=as_ann)
        assert job.status_code == 202, job.text
        done = wait_done(client, job.json()["id"], headers=as_ann, timeout=300)
        assert done["status"] == "done", done["error"]
        assert client.get("/api/v1/me", headers=as_ann).json()["credits"] == balance - 1  # 4 steps: one request per 50
        assert (done["progress"]["step"], done["progress"]["total"]) == (4, 4)
        [grid] = done["images"]  # the last grid of samples, in the gallery
        assert grid["prompt"] == "zkx <lora:my-disc:1>" and grid["settings"]["mode"] == "train_lora"
        assert client.get(grid["url"]).headers["content-type"] == "image/png"
        assert not list(gallery.uploads_dir.iterdir())  # the pictures went with their job
        assert (tmp_path / "studio" / "loras" / str(ann.id) / "my-disc.safetensors").is_file()

        mine = {lora["name"]: lora for lora in client.get("/api/v1/loras", headers=as_ann).json()}
        assert set(mine) == {"my-disc", "paper-cut"} and mine["my-disc"]["own"] and mine["my-disc"]["trigger"] == "zkx"
        assert [lora["name"] for lora in client.get("/api/v1/loras", headers=as_bob).json()] == ["paper-cut"]
        assert {row["name"] for row in client.get("/sdapi/v1/loras", headers=as_ann).json()} == {"my-disc", "paper-cut"}
        assert [row["name"] for row in client.get("/sdapi/v1/loras", headers=as_bob).json()] == ["paper-cut"]

        use = TXT2IMG | {"prompt": "zkx <lora:my-disc:0.9> on a table"}
        message = refused(client.post("/api/v1/jobs", json=use, headers=as_bob), "prompt")
        assert "my-disc" in message and "paper-cut" in message  # bob is told his own list
        # a tag put together by a template's alternatives is checked as each picture's prompt
        refused(client.post("/api/v1/jobs", json=use | {"prompt": "{<lora|<lora}:my-disc:1> zkx"}, headers=as_bob), "prompt")
        # and were the check skipped, bob's job would still not find ann's LoRA: jobs run with their own user's folder
        checked = submit.check_lora_tags
        monkeypatch.setattr(submit, "check_lora_tags", lambda *args: None)
        sneaked = wait_done(client, client.post("/api/v1/jobs", json=use, headers=as_bob).json()["id"], headers=as_bob)
        assert sneaked["status"] == "failed" and "no LoRA named 'my-disc'" in sneaked["error"]
        assert "known LoRAs: paper-cut)" in sneaked["error"]  # his list, not ann's
        monkeypatch.setattr(submit, "check_lora_tags", checked)
        made = client.post("/api/v1/jobs", json=use, headers=as_ann)
        assert made.status_code == 202, made.text
        used = wait_done(client, made.json()["id"], headers=as_ann)
        assert used["status"] == "done", used["error"]

        # the samples are not a picture to vary or re-run
        refused(client.post(f"/api/v1/images/{grid['id']}/actions/vary_subtle", headers=as_ann), "image_id")
        refused(client.post(f"/api/v1/images/{grid['id']}/again", headers=as_ann), "image_id")


def test_a_training_job_is_charged_one_request_per_fifty_steps(tmp_path, models):
    with make_client(tmp_path, multi_user=True, first_month_credits=5, monthly_credits=0, start_worker=False) as client:
        gallery = client.app.state.studio.gallery
        user = gallery.add_user("cy", "pw")
        headers = {"Authorization": f"Bearer {gallery.new_api_key(user.id)}"}
        train = {"mode": "train_lora", "model": "tiny-random", "trigger": "zkx", "pictures": pictures_b64(10, 16),
                 "sample_every": 100}
        assert client.post("/api/v1/jobs", json=train | {"steps": 101}, headers=headers).status_code == 202
        assert client.get("/api/v1/me", headers=headers).json()["credits"] == 2  # ceil(101 / 50) = 3
        assert client.post("/api/v1/jobs", json=train | {"steps": 150}, headers=headers).status_code == 402
