"""Issue 22 probe: the shipped float stack (runs/i22/sj/ft/model.pt) with a per-output-channel
correction exponent (corr_log, zeros: the same network) in each 1.5-BM layer, for a fine-tune
that learns them (runs/i22/cc/run.sh)."""
import torch

d = torch.load("runs/i22/sj/ft/model.pt", weights_only=False, map_location="cpu")
sd = d["state_dict"]
for key in list(sd):
    if key.endswith(".corr_x"):
        pre = key.rsplit(".", 1)[0]
        out_ch = sd[pre + ".bias"].shape[0]
        sd[pre + ".corr_log"] = torch.zeros(out_ch)
        print(pre, out_ch)
d.pop("train_config", None)
torch.save(d, "runs/i22/cc/seed.pt")
