"""gen_diffusion_fixture.py — reference values for tests/core/test_diffusion.c from Hugging Face
diffusers' schedulers (DDPMScheduler, DDIMScheduler, DPMSolverMultistepScheduler).

For the linear and cosine ("squaredcos_cap_v2") schedules with T = 1000 it stores
alphas_cumprod (diffusers' float32 and a float64 recomputation), the timestep sequences of 50
inference steps, and, for fixed random x_t and model outputs, one step of DDPM (fixed_small
variance; the variance noise reproduced from the generator diffusers is given), DDIM (eta 0 and
eta 1 with a given variance_noise) and three consecutive steps of DPM-Solver++(2M), for epsilon
and v prediction. clip_sample is off (knnd does not clip).

The scheduler steps run with alphas_cumprod replaced by the float64 values (and, for DPM-Solver++,
sigmas recomputed in float64) and float64 tensors, so the fixture checks the step formulas
without diffusers' float32 rounding of the schedule; alphas_cumprod_f32 keeps diffusers' own.

  python3 tests/reference/gen_diffusion_fixture.py  ->  tests/reference/diffusion_fixture.safetensors
"""
import os

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from safetensors.torch import save_file

T, N = 1000, 50
SHAPE = (2, 3, 4, 4)
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "diffusion_fixture.safetensors")


def f64_alphas_cumprod(schedule):
    if schedule == "linear":
        betas = np.linspace(1e-4, 0.02, T, dtype=np.float64)
    else:
        f = lambda t: np.cos((t + 0.008) / 1.008 * np.pi / 2) ** 2
        i = np.arange(T, dtype=np.float64)
        betas = np.minimum(1 - f((i + 1) / T) / f(i / T), 0.999)
    return torch.from_numpy(np.cumprod(1 - betas))


def use_f64(s, ac):
    s.alphas_cumprod = ac.clone()
    s.alphas = torch.cat([ac[:1], ac[1:] / ac[:-1]])
    s.betas = 1 - s.alphas


def main():
    g = torch.Generator().manual_seed(1234)
    # inputs rounded to float32 (what the fixture stores) before diffusers computes in float64
    r = lambda: torch.randn(SHAPE, generator=g).double()
    x, outs, noise = r(), [r(), r(), r()], r()
    fx = {"x": x, "out0": outs[0], "out1": outs[1], "out2": outs[2], "noise": noise}
    for sched, name in (("linear", "linear"), ("cosine", "squaredcos_cap_v2")):
        ac = f64_alphas_cumprod(sched)
        common = dict(num_train_timesteps=T, beta_schedule=name)
        fx[f"{sched}.alphas_cumprod_f32"] = DDPMScheduler(**common).alphas_cumprod.double()
        fx[f"{sched}.alphas_cumprod"] = ac
        for spacing in ("leading", "trailing", "linspace"):
            s = DDIMScheduler(**common, timestep_spacing=spacing)
            s.set_timesteps(N)
            fx[f"{sched}.ts.ddim.{spacing}"] = s.timesteps.long()
            s = DDPMScheduler(**common, timestep_spacing=spacing)
            s.set_timesteps(N)
            fx[f"{sched}.ts.ddpm.{spacing}"] = s.timesteps.long()
            s = DPMSolverMultistepScheduler(**common, timestep_spacing=spacing)
            s.set_timesteps(N)
            fx[f"{sched}.ts.dpmpp.{spacing}"] = s.timesteps.long()
        for pred, pname in (("eps", "epsilon"), ("v", "v_prediction")):
            kw = dict(common, prediction_type=pname)
            # DDPM: one step at the 10th timestep of 50 (leading spacing)
            s = DDPMScheduler(**kw, clip_sample=False)
            use_f64(s, ac)
            s.set_timesteps(N)
            t = int(s.timesteps[10])
            # diffusers draws the variance noise with randn_tensor(shape, generator) in float64 here
            # randn_tensor draws in the model output's dtype (float64); stored rounded to float32
            vn = torch.randn(SHAPE, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
            y = s.step(outs[0], t, x, generator=torch.Generator().manual_seed(7)).prev_sample
            fx[f"{sched}.{pred}.ddpm.t"] = torch.tensor([t, int(s.previous_timestep(t))])
            fx[f"{sched}.{pred}.ddpm.noise"] = vn
            fx[f"{sched}.{pred}.ddpm"] = y
            # DDIM, eta 0 and 1 (the variance noise given)
            s = DDIMScheduler(**kw, clip_sample=False, set_alpha_to_one=True)
            use_f64(s, ac)
            s.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
            s.set_timesteps(N)
            t = int(s.timesteps[10])
            fx[f"{sched}.{pred}.ddim.t"] = torch.tensor([t, t - T // N])
            fx[f"{sched}.{pred}.ddim.eta0"] = s.step(outs[0], t, x, eta=0.0).prev_sample
            fx[f"{sched}.{pred}.ddim.eta1"] = s.step(outs[0], t, x, eta=1.0, variance_noise=noise).prev_sample
            # DPM-Solver++(2M): three consecutive steps from the start
            s = DPMSolverMultistepScheduler(**kw, algorithm_type="dpmsolver++", solver_order=2)
            use_f64(s, ac)
            s.set_timesteps(N)
            s.sigmas = torch.cat([((1 - ac[s.timesteps]) / ac[s.timesteps]) ** 0.5, torch.zeros(1, dtype=torch.float64)])
            s.alpha_t, s.sigma_t = ac ** 0.5, (1 - ac) ** 0.5
            s.lambda_t = torch.log(s.alpha_t) - torch.log(s.sigma_t)
            xs = x
            for i in range(3):
                xs = s.step(outs[i], s.timesteps[i], xs).prev_sample
                fx[f"{sched}.{pred}.dpmpp.{i}"] = xs
            # and the final step (first order with sigma 0) from the last timestep
            s.model_outputs = [None] * s.config.solver_order
            s.lower_order_nums = 0
            s._step_index = len(s.timesteps) - 1
            fx[f"{sched}.{pred}.dpmpp.final"] = s.step(outs[0], s.timesteps[-1], x).prev_sample
    # knnd's safetensors reader takes f32 and i64: values are stored as float32
    fx = {k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in fx.items()}
    save_file(fx, OUT, metadata={"generator": "gen_diffusion_fixture.py", "diffusers": __import__("diffusers").__version__})
    print(OUT, os.path.getsize(OUT), "bytes")


if __name__ == "__main__":
    main()
