import torch
import torchvision.transforms.v2.functional as TF

from cxrbench.methods.augment import ViewRecipe, augment, gaussian_blur, random_crop_boxes


def test_each_image_gets_its_own_crop():
    images = torch.linspace(0, 255, 64).round().to(torch.uint8).repeat(64, 1).expand(8, 64, 64).contiguous()
    recipe = ViewRecipe(flip_probability=0, jitter_probability=0, blur_probability=0)
    views = augment(images, recipe, 32, torch.Generator().manual_seed(0))
    assert views.shape == (8, 1, 32, 32)
    assert 0 <= views.min() and views.max() <= 1
    # identical inputs, different per-image crops -> different views
    assert len({round(v.mean().item(), 4) for v in views}) > 4


def test_crop_boxes_respect_scale_and_image_bounds():
    generator = torch.Generator().manual_seed(0)
    boxes = random_crop_boxes(500, 64, (0.08, 1.0), (3 / 4, 4 / 3), generator, "cpu")
    width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 64 + 1e-4).all()
    area = width * height / 64**2
    assert area.min() >= 0.08 * 0.5 and area.max() <= 1 + 1e-4


def test_batched_blur_matches_torchvision_per_image():
    torch.manual_seed(0)
    images = torch.rand(3, 1, 32, 32)
    sigmas = torch.tensor([0.5, 1.0, 1.5])
    ours = gaussian_blur(images, sigmas)
    radius = int(torch.ceil(3 * sigmas.max()))
    for index, sigma in enumerate(sigmas.tolist()):
        reference = TF.gaussian_blur(images[index], kernel_size=[2 * radius + 1] * 2, sigma=[sigma, sigma])
        torch.testing.assert_close(ours[index], reference, atol=1e-5, rtol=1e-4)


def test_solarization_inverts_bright_pixels_only():
    images = torch.full((4, 16, 16), 200, dtype=torch.uint8)
    recipe = ViewRecipe(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_probability=0, jitter_probability=0,
                        blur_probability=0, solarize_probability=1.0)
    views = augment(images, recipe, 16)
    torch.testing.assert_close(views, torch.full_like(views, 1 - 200 / 255), atol=1e-4, rtol=0)
