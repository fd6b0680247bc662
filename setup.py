from glob import glob

from setuptools import find_packages, setup

package_name = 'ams_ros'

setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(include=['ams_ros', 'ams_ros.*']),
    # The pretrained generic student (state_dict + metadata), its drone ONNX export, and a
    # packaged teacher (ams_ros/data/teachers/README.md).
    package_data={'ams_ros': ['data/*.pt', 'data/*.json', 'data/*.onnx', 'data/teachers/*']},
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
        ('share/' + package_name + '/launch', glob('launch/*.launch.py')),
        ('share/' + package_name + '/config', glob('config/*.yaml') + glob('config/*.xml')),
        ('share/' + package_name + '/config/tasks', glob('config/tasks/*')),
        ('share/' + package_name + '/config/profiles', glob('config/profiles/*.yaml')),
    ],
    python_requires='>=3.10',
    install_requires=[
        'setuptools',
        'numpy',
        'opencv-python-headless',
        'zstandard',
        'PyYAML',
        'av',
        'onnx',
    ],
    extras_require={
        # ONNX Runtime: pick the build that matches the machine.
        'cpu': ['onnxruntime'],
        'gpu': ['onnxruntime-gpu'],
        # The ground station trains; the drone never needs torch.
        'ground': ['torch>=2.1', 'ai-edge-litert'],
        # Offline evaluation (plots, progress) and rosbag2 files without a ROS install.
        'eval': ['matplotlib', 'tqdm'],
        'bag': ['rosbags'],
        'test': ['pytest', 'ruff', 'hypothesis', 'ros-test-msgs'],
    },
    zip_safe=True,
    maintainer='ams_ros maintainers',
    maintainer_email='maintainers@ams-ros.invalid',
    description='Adaptive Model Streaming for ROS 2 (drone student, ground teacher).',
    license='Apache-2.0',
    entry_points={
        'console_scripts': [
            'ams = ams_ros.cli:main',
            'ams_drone = ams_ros.ros.drone_node:main',
            'ams_ground = ams_ros.ros.ground_node:main',
            'ams_camera = ams_ros.ros.camera_node:main',
        ],
    },
)
