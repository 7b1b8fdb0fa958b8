"""bltjax data layer."""
