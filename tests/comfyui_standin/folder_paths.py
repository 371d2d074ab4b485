"""Stand-in for ComfyUI's folder_paths (see README.md): model folders, input/output/temp, save-path counter."""

from __future__ import annotations

import os

folder_names_and_paths: dict[str, tuple[list[str], set[str]]] = {}
base_path = models_dir = output_directory = temp_directory = input_directory = ""


def configure(base: str) -> None:
    """Point every folder under ``base`` (what ComfyUI's --base-directory does)."""
    global base_path, models_dir, output_directory, temp_directory, input_directory
    base_path = os.path.abspath(base)
    models_dir = os.path.join(base_path, "models")
    output_directory = os.path.join(base_path, "output")
    temp_directory = os.path.join(base_path, "temp")
    input_directory = os.path.join(base_path, "input")
    folder_names_and_paths.clear()
    for folder in (models_dir, output_directory, temp_directory, input_directory):
        os.makedirs(folder, exist_ok=True)


def get_output_directory() -> str:
    return output_directory


def get_temp_directory() -> str:
    return temp_directory


def get_input_directory() -> str:
    return input_directory


def add_model_folder_path(folder_name: str, full_folder_path: str, is_default: bool = False) -> None:
    if folder_name in folder_names_and_paths:
        paths = folder_names_and_paths[folder_name][0]
        if full_folder_path in paths:
            if is_default and paths[0] != full_folder_path:
                paths.remove(full_folder_path)
                paths.insert(0, full_folder_path)
        elif is_default:
            paths.insert(0, full_folder_path)
        else:
            paths.append(full_folder_path)
    else:
        folder_names_and_paths[folder_name] = ([full_folder_path], set())


def get_folder_paths(folder_name: str) -> list[str]:
    return folder_names_and_paths[folder_name][0][:]


def get_annotated_filepath(name: str, default_dir: str | None = None) -> str:
    for tag, folder in (("[output]", output_directory), ("[input]", input_directory), ("[temp]", temp_directory)):
        if name.endswith(tag):
            return os.path.join(folder, name[:-len(tag)].rstrip())
    return os.path.join(default_dir or input_directory, name)


def get_save_image_path(filename_prefix: str, output_dir: str, image_width=0, image_height=0):
    subfolder = os.path.dirname(os.path.normpath(filename_prefix))
    filename = os.path.basename(os.path.normpath(filename_prefix))
    full_output_folder = os.path.join(output_dir, subfolder)
    if os.path.commonpath((output_dir, os.path.abspath(full_output_folder))) != output_dir:
        raise Exception("Saving image outside the output folder is not allowed.")
    counters = []
    if os.path.isdir(full_output_folder):
        for name in os.listdir(full_output_folder):
            prefix, rest = name[:len(filename) + 1], name[len(filename) + 1:]
            if prefix == filename + "_" and rest.split("_")[0].isdigit():
                counters.append(int(rest.split("_")[0]))
    else:
        os.makedirs(full_output_folder, exist_ok=True)
    return full_output_folder, filename, max(counters, default=0) + 1, subfolder, filename_prefix
