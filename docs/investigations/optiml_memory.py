"""Peak resident memory and time of one pretraining step of a method (standard settings, 64 px)
at a backbone and batch, on the CPU: the README's OPTiML-at-ResNet-50 figures.

    python docs/investigations/optiml_memory.py optiml resnet50 32
"""
import resource, sys, time, torch
from cxrbench.benchmark.profiles import load_profile, method_hyperparameters
from cxrbench.methods import get_method
name, backbone, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
profile = load_profile("standard")
torch.manual_seed(0)
m = get_method(name)(method_hyperparameters(profile, name), backbone=backbone).train()
opt = m.build_optimizer(batch)
images = torch.randint(0, 256, (batch, 64, 64), dtype=torch.uint8)
views = m.make_views(images, torch.Generator().manual_seed(0))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
t = time.time()
loss, _ = m.training_step(views); opt.zero_grad(); loss.backward(); opt.step()
print(f"{name} {backbone} batch {batch}: peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/2**20:.2f} GiB "
      f"(before the step {before:.2f}), step {time.time()-t:.1f} s")
