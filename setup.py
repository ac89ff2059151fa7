"""dcign_tf: the Deep Convolutional Inverse Graphics Network in Keras 3 / TensorFlow."""
from setuptools import find_packages, setup

setup(
    name="dcign_tf",
    version="0.1.0",
    description="DC-IGN (Kulkarni et al., NIPS 2015) as a Keras 3 / TensorFlow training system",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["dcign_tf", "dcign_tf.*"]),
    include_package_data=True,
    package_data={"dcign_tf": ["studio_page.html"]},  # the studio's page, read next to studio.py
    # One command per entry point; each is also `python -m <module>`.
    entry_points={"console_scripts": [
        "dcign-train = dcign_tf.train:main",
        "dcign-evaluate = dcign_tf.evaluate:main",
        "dcign-render = dcign_tf.render:main",
        "dcign-studio = dcign_tf.studio:main",
        "dcign-study = dcign_tf.study:main",
        "dcign-make-faces = dcign_tf.data.make_faces:main",
        "dcign-make-chairs = dcign_tf.data.make_chairs:main",
        "dcign-make-smallnorb = dcign_tf.data.make_smallnorb:main",
    ]},
    install_requires=[
        "tensorflow>=2.18",
        "keras>=3.8",
        "tensorflow-datasets>=4.9.7",
        "tensorboard>=2.18",
        "numpy>=1.26",
        "absl-py>=2.1",
        "pillow>=10.0",
        "scipy>=1.11",
        "scikit-learn>=1.4",
        "h5py>=3.10",
        "tqdm>=4.66",
        "matplotlib>=3.8",
    ],
    extras_require={
        "test": ["pytest>=8.0", "kubernetes-validate>=1.31", "jsonschema>=4.18", "pyyaml>=6.0",
                 "selenium>=4.15"],
        "cuda": ["tensorflow[and-cuda]>=2.18"],
        "torch": ["torch>=2.4"],
    },
)
