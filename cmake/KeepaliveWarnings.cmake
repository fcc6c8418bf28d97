# Warnings for project targets; sanitizers when KEEPALIVE_SANITIZE is on.
if(KEEPALIVE_SANITIZE)
  add_compile_options(-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all)
  add_link_options(-fsanitize=address,undefined)
endif()

function(keepalive_warnings target)
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wpedantic -Wshadow -Wconversion
    -Wno-sign-conversion $<$<BOOL:${KEEPALIVE_WERROR}>:-Werror>)
endfunction()
