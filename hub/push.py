"""Upload a checkpoint folder written by `save_for_hub` to the Hugging Face Hub as one commit."""

import argparse
import os
from pathlib import Path

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

from .bundle import verify_checkpoint


def push_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    commit_message: str | None = None,
    revision: str | None = None,
) -> str:
    """
    Verify `folder`, create `repo_id` if needed, and make the repo hold exactly the folder's files in a single commit
    (uploading them, deleting remote files the folder no longer has, `.gitattributes` aside); returns the commit URL.

    One commit means the repo never holds a mix of old weights and new code. `private` only applies when the repo is
    created; `revision` names a branch, created from `main` if it does not exist yet.
    """
    folder = Path(folder)
    verify_checkpoint(folder)
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    if revision is not None:
        api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
    local = {path.relative_to(folder).as_posix(): path for path in sorted(folder.rglob("*")) if path.is_file()}
    remote = api.list_repo_files(repo_id, revision=revision, repo_type="model")
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=path) for name, path in local.items()]
    operations += [
        CommitOperationDelete(path_in_repo=name) for name in sorted(remote) if name not in local and name != ".gitattributes"
    ]
    commit = api.create_commit(
        repo_id,
        operations=operations,
        commit_message=commit_message or f"Upload {folder.name}",
        repo_type="model",
        revision=revision,
    )
    return commit.commit_url


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Upload a checkpoint written by hub.save_for_hub in one commit.")
    parser.add_argument("folder", type=Path, help="checkpoint folder written by hub.save_for_hub")
    parser.add_argument("repo_id", help="target model repo, e.g. user/vlp-dual-encoder")
    parser.add_argument("--private", action="store_true", help="create the repo as private (if it does not exist)")
    parser.add_argument("--token", default=None, help="Hub token; defaults to the cached login or HF_TOKEN")
    parser.add_argument("--message", default=None, help="commit message")
    parser.add_argument("--revision", default=None, help="branch to commit to; created if missing")
    args = parser.parse_args(argv)
    print(
        push_to_hub(
            args.folder,
            args.repo_id,
            token=args.token,
            private=args.private,
            commit_message=args.message,
            revision=args.revision,
        )
    )


if __name__ == "__main__":
    main()
