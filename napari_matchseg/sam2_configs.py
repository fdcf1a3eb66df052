"""The SAM 2.1 sizes the project knows, and their configs in the installed sam2 package (no torch import here)."""

SAM2_CONFIGS = {
    "sam2.1_hiera_tiny": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "sam2.1_hiera_small": "configs/sam2.1/sam2.1_hiera_s.yaml",
    "sam2.1_hiera_base_plus": "configs/sam2.1/sam2.1_hiera_b+.yaml",
    "sam2.1_hiera_large": "configs/sam2.1/sam2.1_hiera_l.yaml",
}
DEFAULT_SAM2 = "sam2.1_hiera_tiny"

__all__ = ["DEFAULT_SAM2", "SAM2_CONFIGS"]
